"""Watermarks: ``watermark.pixel`` (post-hoc, any image) and the shared attack suite."""
