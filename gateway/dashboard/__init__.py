"""The web dashboard, served by the gateway under ``/dashboard`` (docs/dashboard.md).

Server-rendered pages (no front-end library, nothing from another host): operator sign-in
with a password and TOTP (:mod:`.operators`), sessions and sign-in limits (:mod:`.sessions`,
a pure core), the operator pages over the nodes' status APIs (:mod:`.pages`,
:mod:`.routes`), the partner side (partner users and roles: :mod:`.partner_users`; their
sign-in and the partner pages in test or live mode: :mod:`.partner_routes`,
:mod:`.partner_pages`) and the self-contained receipt verifier (``static/verifier.html``).
"""
