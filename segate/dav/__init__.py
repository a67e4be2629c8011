"""The WebDAV protocol pieces: request headers and PROPFIND XML, parsed and rendered.

``headers`` and ``xml`` are pure (no I/O, no aiohttp): they turn header strings and bodies into
plain values and raise :mod:`segate.errors` exceptions for the web layer to map.
"""
