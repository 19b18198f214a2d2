"""spanpulse.schemas."""
