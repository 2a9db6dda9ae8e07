"""Audio in: capture, resampling, the front end (log-mel), onsets."""
