"""spanpulse.detectors."""
