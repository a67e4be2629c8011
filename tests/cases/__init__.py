# ruff: noqa: E501  (the index table below is one row per case)
"""Field reports B02-B28 (``../shared/cases/field-reports.md``) as tests: index.

Each case has a module here pinning its right value; where a case was already covered in depth
elsewhere, that test is listed too (not duplicated). Where the report allows two behaviours, the
one segate implements is named, and README documents it.

| case | right value (segate's choice) | tests |
| --- | --- | --- |
| B02 paths | ``..``-scopes (raw, ``%2e%2e``, ``%252e%252e``) → token 401; request ``..`` clamped; hidden dot-segment / bad escape → 400 | test_b02_paths.py; tests/integration/test_dav_verbs.py::test_request_paths_stay_inside; tests/unit/test_jwt.py (B02); tests/fuzz/test_requests_fuzz.py (whole kind) |
| B04 ancestors | create scope may stat and MKCOL its missing ancestors, nothing else; UPLOAD macaroon likewise | test_b04_ancestors.py; tests/integration/test_macaroon_endpoint.py::test_b04_upload_macaroon_and_ancestors |
| B05 capability vs identity | no storage scope → identity (default deny: 403); ``storage.stage`` reads (``stage_implies_read = true``) | test_b05_capability_identity.py; tests/unit/test_jwt.py (B05) |
| B06 audience | exact forms ``https://host:port`` and bare ``host``; wildcard only when enabled (default on) | test_b06_audience.py; tests/unit/test_jwt.py (B06) |
| B07 time claims | verified-token cache until ``min(exp, +300 s)``, no touch-on-hit; float exp, no nbf OK; 60 s leeway | test_b07_time_claims.py; tests/unit/test_jwt.py (B07) |
| B08 JWKS | rotation refetch, kid floods cooled down, single fetch on first use, hung issuer bounded; no ``kid`` → only with one key | test_b08_jwks.py; tests/integration/test_jwks_discovery.py; tests/faults/test_issuer_faults.py |
| B09 token leakage | query tokens honoured and stripped; no secret in logs/bodies/Location | test_b09_token_leakage.py; tests/secrets.py (autouse, every test); tests/integration/test_dav_verbs.py::test_query_token_and_redaction; test_macaroon_endpoint.py::test_macaroon_never_logged |
| B12 keep-alive | each request judged by its own credential | test_b12_keepalive.py; test_macaroon_endpoint.py::test_b12_keep_alive_each_request_its_own_macaroon; test_x509_inprocess.py::test_keepalive_connection_identity_per_request |
| B13 VOMS | failing AC → DN only (logged); lifetime = min(chain, AC) | tests/integration/test_x509_inprocess.py::test_b13_matrix, ::test_macaroon_from_a_proxy_carries_its_identity; tests/unit/test_voms.py; tests/interop/test_x509_clients.py |
| B14 PUT edges | 201/size 0; 411 (or 400) no file; chunked; 405; 409; missing parents created (``create_parents = true``; false → 409); abort → nothing | test_b14_put_edges.py; tests/integration/test_dav_verbs.py (PUT tests) |
| B15 staging | authorised against the target; staging under ``/.segate`` unreachable (404) and never listed | test_b15_staging.py |
| B16 MKCOL | one 201, others 405; missing parent 409 | test_b16_mkcol.py; test_dav_verbs.py::test_mkcol_concurrent_one_winner |
| B17 MOVE | read-only 403; into itself 409; Overwrite F 412 / T 204; destination authorised | test_b17_move.py; test_dav_verbs.py::test_move |
| B18 PROPFIND | well-formed XML, encoded round-trippable hrefs, ``/`` on collections, exact 5 GiB length, infinity 403 | test_b18_propfind.py; tests/unit/test_dav_xml.py (B18) |
| B19 ranges | 206/416 exact; multipart; >200 ranges → one 400; HEAD ignores Range | test_b19_ranges.py; tests/unit/test_dav_headers.py (B19) |
| B20 digests | zero-padded adler32, case-insensitive names, q-values, one supported value, whole-file digest on ranges | test_b20_digest.py; tests/unit/test_dav_headers.py (B20) |
| B21 TPC headers | TransferHeader* forwarded (any case), client token never; 401 named in failure | test_b21_b26_tpc.py::test_b21_*; tests/integration/test_tpc_remote.py::test_transfer_headers_are_forwarded_and_client_token_is_not |
| B22 TPC stream | 202, markers (≥1), one final line; 404 in failure; pre-start errors plain 4xx | test_b21_b26_tpc.py::test_b22_*; tests/integration/test_tpc.py (markers), tests/unit/test_tpc_markers.py |
| B24 TPC stall | idle timeout names direction; partial removed | test_b21_b26_tpc.py::test_b24_*; test_tpc_remote.py::test_remote_stalls_idle_timeout, ::test_push_to_a_remote_that_stops_reading, ::test_tls_handshake_never_answered |
| B25 TPC Overwrite | F → 412 before data; T/absent replace; create-only 403; push replaces | test_b21_b26_tpc.py::test_b25_*; test_tpc.py::test_overwrite_rules; test_tpc_remote.py::test_push_overwrite_f_checks_the_remote |
| B26 TPC URLs | encoded path sent once as given; redirects keep query; cross-host creds off; loop/downgrade refused | test_b21_b26_tpc.py::test_b26_*; test_tpc_remote.py (redirect tests) |
| B28 framing | CL/TE conflicts, duplicate/negative CL, ``chunkedX`` → 400, nothing smuggled; ``CHUNKED`` is chunked; CR/LF in target → 400 | test_b28_framing.py; tests/unit/test_dav_headers.py (B28) |

Issue #8 beyond the cases: tests/fuzz (hypothesis invariants), tests/limits (every limit's 4xx),
tests/faults (disk full, unreadable root, issuer down/slow, key rotation, SIGTERM drain,
restart), tests/load (short load run; ``python -m testbed.load`` for the long one).
"""
