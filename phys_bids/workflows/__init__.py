"""Runtime workflows (importable when installed): the participant level."""
