"""Delivery reports for internationalised addresses (RFC 6533), as three MTAs write them.

No such report is in the shared corpus (nothing there has
``message/global-delivery-status``, a ``utf-8`` address type or ``\\x{...}``
escapes), so these are written by hand:

- :func:`postfix_dsn` follows the format strings of Postfix's
  ``src/bounce/bounce_notify_util.c`` for mail received with SMTPUTF8
  (``smtputf8_enable = yes``): ``report-type=delivery-status``, a
  ``message/global-delivery-status`` part in 8bit with ``Final-Recipient:
  utf-8; jörg@example.de`` in raw UTF-8, and the whole mail returned as
  ``message/global``.
- :func:`exim_dsn` is in Exim's layout (``Content-type:``, ``rfc822;`` without
  a space, ``X-Exim-Diagnostic``) with the RFC 6533 forms: the
  ``utf-8-addr-xtext`` escapes of section 3 (``j\\x{F6}rg``), the report type
  ``global-delivery-status`` and only the headers returned, as
  ``message/global-headers``.
- :func:`m365_dsn` is in Exchange Online's layout (``rfc822;`` addresses
  in UTF-8, ``X-Display-Name``, ``RESOLVER.ADR.RecipientNotFound``), its
  delivery-status part base64-encoded, as RFC 6532 allows for ``message/*``.

``returned`` is the returned mail (or its header block), in bytes as it went out.
"""

from __future__ import annotations

import base64

JOERG = "jörg@example.de"


def returned_mail(message_id: str, to: str = f"Jörg Müller <{JOERG}>") -> bytes:
    """A mail of ours as it left (RFC 6532: its To in UTF-8)."""
    return (
        "From: Example Support <support@example.com>\r\n"
        f"To: {to}\r\n"
        "Subject: Re: Drucker brennt [#1]\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Hallo Jörg,\r\n\r\nbitte ziehen Sie den Stecker.\r\n"
    ).encode()


def headers_of(mail: bytes) -> bytes:
    """The header block of ``mail``, with the blank line that ends it."""
    for end in (b"\r\n\r\n", b"\n\n"):
        if end in mail:
            return mail.split(end, 1)[0] + end
    return mail


def postfix_dsn(
    to: str,
    returned: bytes,
    *,
    recipient: str = JOERG,
    status: str = "5.1.1",
    said: str = "User unknown in virtual mailbox table",
) -> bytes:
    boundary = "4F1A23C0B1.1772438700/mx.example.de"
    reply = f"550 {status} <{recipient}>: Recipient address rejected: {said}"
    head = (
        "Date: Mon,  2 Mar 2026 10:05:00 +0100 (CET)\r\n"
        "From: MAILER-DAEMON@mx.example.de (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {to}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n"
        "Message-Id: <20260302090500.5A1B2C3D4E@mx.example.de>\r\n\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "This is the mail system at host mx.example.de.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n\r\n"
        "                   The mail system\r\n\r\n"
        f"<{recipient}>: host mail.example.de[192.0.2.25] said: {reply} (in reply to\r\n"
        "    RCPT TO command)\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/global-delivery-status\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Reporting-MTA: dns; mx.example.de\r\n"
        "X-Postfix-Queue-ID: 4F1A23C0B1\r\n"
        f"X-Postfix-Sender: rfc822; {to}\r\n"
        "Arrival-Date: Mon,  2 Mar 2026 10:04:58 +0100 (CET)\r\n\r\n"
        f"Final-Recipient: utf-8; {recipient}\r\n"
        f"Original-Recipient: utf-8; {recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mail.example.de\r\n"
        f"Diagnostic-Code: smtp; {reply}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message\r\n"
        "Content-Type: message/global\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        f"Return-Path: <{to}>\r\n"
    )
    return head.encode() + returned + f"\r\n--{boundary}--\r\n".encode()


def exim_dsn(
    to: str,
    returned: bytes,
    *,
    recipient: str = "j\\x{F6}rg@example.de",
    final: str = "rfc822;jörg@example.de",
) -> bytes:
    """``recipient`` is the utf-8-addr-xtext the ORCPT carried; ``final`` the typed
    Final-Recipient value."""
    boundary = "1772442300-eximdsn-1804289383"
    return (
        (
            f"Return-path: <>\r\n"
            "Received: from Debian-exim by mx.example.de with local (Exim 4.97)\r\n"
            "\tid 1vXyZa-000123-4b for support@example.com; Mon, 02 Mar 2026 10:05:00 +0100\r\n"
            "X-Failed-Recipients: jörg@example.de\r\n"
            "Auto-Submitted: auto-replied\r\n"
            "From: Mail Delivery System <Mailer-Daemon@mx.example.de>\r\n"
            f"To: {to}\r\n"
            f"Content-Type: multipart/report; report-type=global-delivery-status; boundary={boundary}\r\n"
            "MIME-Version: 1.0\r\n"
            "Subject: Mail delivery failed: returning message to sender\r\n"
            "Message-Id: <E1vXyZa-000123-4b@mx.example.de>\r\n"
            "Date: Mon, 02 Mar 2026 10:05:00 +0100\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            "This message was created automatically by mail delivery software.\r\n\r\n"
            "A message that you sent could not be delivered to one or more of its\r\n"
            "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
            "  jörg@example.de\r\n"
            "    host mail.example.de [192.0.2.25]\r\n"
            "    SMTP error from remote mail server after RCPT TO:<jörg@example.de>:\r\n"
            "    550 5.1.1 <jörg@example.de>: Recipient address rejected: User unknown\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-type: message/global-delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.de\r\n\r\n"
            f"Original-Recipient: utf-8;{recipient}\r\n"
            "Action: failed\r\n"
            f"Final-Recipient: {final}\r\n"
            "Status: 5.0.0\r\n"
            "Remote-MTA: dns; mail.example.de\r\n"
            "X-Remote-MTA-smtp-greeting: X-str; 220 mail.example.de ESMTP\r\n"
            "X-Exim-Diagnostic: X-str; SMTP error from remote mail server after RCPT TO:\r\n"
            " <jörg@example.de>: 550 5.1.1 <jörg@example.de>: Recipient address rejected:\r\n"
            " User unknown\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 <jörg@example.de>: Recipient address rejected:\r\n"
            " User unknown\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-type: message/global-headers\r\n\r\n"
        ).encode()
        + headers_of(returned)
        + f"--{boundary}--\r\n".encode()
    )


def m365_dsn(
    to: str,
    returned: bytes,
    *,
    recipient: str = JOERG,
    status: str = "5.1.10",
) -> bytes:
    boundary = "f2a1b3c4-d5e6-4f70-8192-a3b4c5d6e7f8"
    fields = (
        "Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com\r\n"
        "Received-From-MTA: dns;mx.example.com\r\n"
        "Arrival-Date: Mon, 2 Mar 2026 09:04:58 +0000\r\n\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Final-Recipient: rfc822;{recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp;550 {status} RESOLVER.ADR.RecipientNotFound; Recipient\r\n"
        f" {recipient} not found by SMTP address lookup\r\n"
        "X-Display-Name: Jörg Müller\r\n"
    ).encode()
    encoded = base64.encodebytes(fields).replace(b"\n", b"\r\n")
    return (
        (
            "From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@example.de>\r\n"
            f"To: <{to}>\r\n"
            "Date: Mon, 2 Mar 2026 09:05:01 +0000\r\n"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f'\tboundary="{boundary}"\r\n'
            "X-MS-Exchange-Message-Is-Ndr:\r\n"
            "Content-Language: en-US\r\n"
            "Message-ID: <8c9d0e1f-2a3b-4c5d-6e7f-8091a2b3c4d5@AM0PR01MB1234.eurprd01.prod.exchangelabs.com>\r\n"
            "Subject: Undeliverable: Re: Drucker brennt [#1]\r\n"
            "Auto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\n\r\n"
            f"--{boundary}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            "Your message to jörg@example.de couldn't be delivered.\r\n"
            "jörg wasn't found at example.de.\r\n\r\n"
            f"--{boundary}\r\n"
            "Content-Type: message/global-delivery-status\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + encoded
        + (f"\r\n--{boundary}\r\nContent-Type: message/global-headers\r\n\r\n").encode()
        + headers_of(returned)
        + f"--{boundary}--\r\n".encode()
    )
