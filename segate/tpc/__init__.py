"""HTTP third-party copy (PROTOCOLS.md §4): segate as the active party, pull and push.

parse.py     COPY headers -> TransferRequest (pure)
markers.py   perf markers and the final success:/failure: line (pure)
digest.py    adler32 from Digest headers, joining per-block values (pure)
netguard.py  which remote addresses a transfer may reach; a guarded DNS resolver
client.py    the HTTP client side: one session, redirect policy, credential forwarding
streams.py   moving bytes between responses and storage; progress for markers and watchdog
engine.py    one transfer: pull (single or multi-stream), idle watchdog, cleanup
push.py      push: one PUT streamed from storage
handler.py   the COPY-TPC extension: authorise, answer 202, stream markers
slots.py     [tpc] max_active: transfers counted over all worker processes
"""
