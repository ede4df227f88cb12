"""shoplens.sdk: the phone's flow in Python (LiteRT), the HTTP client and catalog import.

Needs the ``device`` extra only: no torch, as on a phone.
"""
