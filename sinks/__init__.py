"""spanpulse.sinks."""
