"""The web dashboard, served by the gateway under ``/dashboard`` (docs/dashboard.md).

Server-rendered pages (no front-end library, nothing from another host): operator sign-in
with a password and TOTP (:mod:`.operators`), sessions and sign-in limits (:mod:`.sessions`,
a pure core), the operator pages over the nodes' status APIs (:mod:`.pages`,
:mod:`.routes`) and the self-contained receipt verifier (``static/verifier.html``).
"""
