"""Checks a gateway answer against the gateway's OpenAPI document (gateway/openapi.py).

:class:`CheckedPartnerClient` is the partner client the route tests use: every answer it gets
is validated with openapi-core against the document the gateway serves, so a route that
answers anything its document does not describe (a field, a status, a content type) fails the
test that made the request. A path the document does not have must be answered by a problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.testing import MockRequest, MockResponse

from gateway.openapi import openapi_document
from tools.client import PartnerClient

__all__ = ["CheckedPartnerClient", "check_answer"]

SPEC = OpenAPI.from_dict(
    openapi_document(),
    config=Config(extra_media_type_deserializers={"application/problem+json": json.loads}),
)
answers_checked = 0  # a test can assert the checker actually ran


def check_answer(
    method: str, path_qs: str, status: int, headers: Mapping[str, str], raw: bytes
) -> None:
    global answers_checked
    parts = urlsplit(path_qs)
    content_type = headers.get("Content-Type", "").split(";")[0].strip()
    request = MockRequest("http://gateway", method, parts.path, args=dict(parse_qsl(parts.query)))
    response = MockResponse(
        raw, status_code=status, headers=dict(headers), content_type=content_type
    )
    try:
        SPEC.validate_response(request, response)
    except PathNotFound:
        assert status in (404, 405), f"{method} {path_qs}: {status} on a path not documented"
        assert content_type == "application/problem+json", content_type
        assert isinstance(json.loads(raw)["code"], str)
    answers_checked += 1


class CheckedPartnerClient(PartnerClient):
    def received(
        self, method: str, path: str, status: int, headers: Mapping[str, str], raw: bytes
    ) -> None:
        check_answer(method, path, status, headers, raw)
