"""Shared by every stage: classes, stops, EXIF reading, files, console, figures."""
