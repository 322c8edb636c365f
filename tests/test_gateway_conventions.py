"""API conventions the gateway keeps on every route: the dated API version header, problems
naming the offending parameter (the real gateway in process: inprocess_gateway.py)."""

from __future__ import annotations

import json
from pathlib import Path

from inprocess_gateway import client_of, gateway_without_nodes

from gateway.openapi import API_VERSION, API_VERSION_HEADER, API_VERSIONS


async def test_every_answer_names_its_api_version_and_unknown_ones_are_refused(
    tmp_path: Path,
) -> None:
    async with gateway_without_nodes(tmp_path) as layout:
        client = client_of(layout, "shop-a")
        try:
            default = await client.get_record("zz")
            assert default.headers[API_VERSION_HEADER] == API_VERSION
            for version in API_VERSIONS:
                path = "/v1/records/zz"
                headers = {**client.signed_headers("GET", path, b""), API_VERSION_HEADER: version}
                pinned = await client.send("GET", path, b"", headers)
                assert pinned.status == 400 and pinned.body["code"] == "invalid_record_id"
                assert pinned.headers[API_VERSION_HEADER] == version
            headers = {
                **client.signed_headers("GET", "/v1/records/zz", b""),
                API_VERSION_HEADER: "1999-01-01",
            }
            unknown = await client.send("GET", "/v1/records/zz", b"", headers)
            assert unknown.status == 400
            assert unknown.body["code"] == "invalid_api_version"
            assert unknown.body["param"] == API_VERSION_HEADER
            public = await client.send("GET", "/v1/openapi.json")
            assert public.status == 200 and public.headers[API_VERSION_HEADER] == API_VERSION
            assert json.dumps(public.body)  # the document itself, checked by test_openapi
            # Public routes refuse an unknown version too, as their documents say (the fuzzer
            # found /healthz, /readyz and the document's own route answering an undocumented 400).
            for path in ("/healthz", "/readyz", "/v1/openapi.json"):
                refused = await client.send("GET", path, b"", {API_VERSION_HEADER: "1999-01-01"})
                assert refused.status == 400, path
                assert refused.body["code"] == "invalid_api_version"
        finally:
            await client.close()
