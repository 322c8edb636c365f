"""Payments (issue 14): the pure cores of paying partners by QR code and barcode.

:mod:`business.payments.codes` holds the payment codes themselves (EMVCo merchant-presented
QR payloads and consumer-presented one-time codes, with their images).
"""
