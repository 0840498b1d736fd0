from tests.keys.recording_provider import recording_provider

__all__ = ["recording_provider"]
