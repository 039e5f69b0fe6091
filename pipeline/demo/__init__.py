"""The bundled default: a real instrument dataset rendered from a SoundFont (``data``) and the
whole pipeline run on it (``run``)."""
