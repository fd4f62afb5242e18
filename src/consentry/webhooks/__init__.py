"""Outbound webhooks: consent changes sent, signed, to other systems (CRM, shop).

service.py: endpoints, the outbox fed by every ledger append, the delivery log.
dispatch.py: sending with HMAC-SHA256 signatures and retries; `verify_signature` for receivers.
"""
