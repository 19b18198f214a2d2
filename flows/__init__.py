"""spanpulse.flows."""
