"""Is this mail really from an agent? (MAIL-RULES §5 trust; pure, no database.)

From alone proves nothing. A mail counts as an agent's only when

1. it is sent to a reply address (``support+a-<ticket>-<sig>``) or answers a
   Message-ID (``md.a.<ticket>...``) whose HMAC was made for that agent and
   that ticket, and the From address is one of that agent's addresses; and
2. where ``agent_mail.require_dmarc``/``require_dkim``/``require_spf`` is set,
   the topmost ``Authentication-Results`` header whose authserv-id is one we
   trust (our own receiving MTA) shows a pass aligned with the agent's domain;
   with ``dkim_verify_fallback`` and no trusted header, DKIM is verified here.

Only In-Reply-To is read for agent Message-IDs, not References: a customer's
reply may well carry our ids in References, but it never answers a mail that
only the agent received.

The purpose of the reference says what the reply is: ``a`` an answer for the
customer, ``n`` (a reply to a mail about the agent's own mail) an internal
note, ``c`` the confirmation of held commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from maildesk.config import AgentMailSettings, AgentSettings
from maildesk.domain.author import MAX_SHOWN_ADDRESS, shorten
from maildesk.domain.authresults import trusted_results
from maildesk.domain.message import ParsedMessage
from maildesk.domain.signing import RefPurpose, Signer


@dataclass(frozen=True, slots=True)
class AgentRef:
    """A signed agent reference found on the mail, and for whom it verifies."""

    ticket: int
    via: str  # "address support+a-12-..." or "In-Reply-To <md.a.12...>"
    agent: str | None  # None: verifies for no agent (forged or altered)
    purpose: str = RefPurpose.AGENT
    extra: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthCheck:
    ok: bool
    passed: tuple[str, ...] = ()  # e.g. ("dmarc", "dkim")
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for a mail that carries agent references or an agent's From."""

    trusted: bool
    agent: str | None  # the agent it is (or claims to be, or whose signature it carries)
    ticket: int | None
    reason: str
    checks: tuple[str, ...] = field(default=())  # factors that passed, for the audit event
    ref: AgentRef | None = None


_AGENT_PURPOSES = (RefPurpose.AGENT, RefPurpose.NOTE, RefPurpose.CONFIRM)
# The purposes an agent Message-ID is made with (a confirmation needs its signed address).
_MESSAGE_ID_PURPOSES = (RefPurpose.AGENT, RefPurpose.NOTE)


def signed_locals(addresses: Iterable[str], support_addresses: Iterable[str]) -> list[str]:
    """Local parts of sub-addresses (``base+...``) of our support addresses."""
    bases = {a.split("@", 1)[0].lower() for a in support_addresses}
    out = []
    for address in dict.fromkeys(a.lower() for a in addresses if a):
        local = address.rpartition("@")[0]
        if "+" in local and local.split("+", 1)[0] in bases:
            out.append(local)
    return out


def _tail_purpose(local: str) -> str:
    return local.rpartition("+")[2].split("-", 1)[0]


def signed_for_an_agent(address: str, support_addresses: Iterable[str]) -> bool:
    """``address`` is a sub-address of ours of an agent purpose (signed or claiming to
    be): whoever holds one may answer as that agent."""
    locals_ = signed_locals([address], support_addresses)
    return bool(locals_) and _tail_purpose(locals_[0]) in _AGENT_PURPOSES


def agent_refs(
    msg: ParsedMessage,
    envelope_to: Sequence[str],
    support_addresses: Iterable[str],
    signer: Signer,
    agents: Sequence[AgentSettings],
) -> list[AgentRef]:
    """Every agent-purpose reference on the mail, with the agent it verifies for."""
    recipients = [*envelope_to, *(a.addr for a in (*msg.to, *msg.cc))]
    refs: list[AgentRef] = []
    for local in signed_locals(recipients, support_addresses):
        purpose = _tail_purpose(local)
        if purpose not in _AGENT_PURPOSES:
            continue
        found = _verify_local(local, signer, agents)
        ticket = found[1] if found else _claimed_ticket(local)
        if ticket is None:
            continue
        extra = found[2] if found else ()
        # ``via`` is shown to the agent when the mail is held: the sender chose it.
        via = f"address {shorten(local, MAX_SHOWN_ADDRESS)}@"
        refs.append(AgentRef(ticket, via, found[0] if found else None, purpose, extra))
    for mid in msg.in_reply_to:
        local = mid.rpartition("@")[0].lower()
        parts = local.split(".")
        if len(parts) != 5 or parts[0] != "md" or parts[1] not in _MESSAGE_ID_PURPOSES:
            continue
        agent = next(
            (a.name for a in agents if signer.parse_outbound_message_id(mid, agent=a.name)), None
        )
        if parts[2].isdigit() and len(parts[2]) <= 18:
            via = f"In-Reply-To <{shorten(mid, MAX_SHOWN_ADDRESS)}>"
            refs.append(AgentRef(int(parts[2]), via, agent, parts[1]))
    return refs


def _verify_local(
    local: str, signer: Signer, agents: Sequence[AgentSettings]
) -> tuple[str, int, tuple[str, ...]] | None:
    for agent in agents:
        signed = signer.parse_reply_local_part(local, agent=agent.name)
        if signed is not None and signed.purpose in _AGENT_PURPOSES:
            return agent.name, signed.ticket, signed.extra
    return None


def _claimed_ticket(local: str) -> int | None:
    parts = local.rpartition("+")[2].split("-")
    if len(parts) >= 3 and parts[1].isdigit() and len(parts[1]) <= 18:
        return int(parts[1])
    return None


def judge(
    refs: Sequence[AgentRef],
    sender: str,
    sender_agent: AgentSettings | None,
    auth: Callable[[AgentSettings], AuthCheck],
    agent_by_name: Callable[[str], AgentSettings | None],
) -> Verdict | None:
    """Trusted, forged, or None when the mail makes no agent claim at all."""
    if not refs:
        return None  # From alone: the caller decides (held when it joins a ticket)
    good = [r for r in refs if r.agent is not None]
    bad = [r for r in refs if r.agent is None]
    if bad:  # one altered or replayed reference taints the whole mail
        ref = bad[0]
        who = sender_agent.name if sender_agent else None
        return Verdict(
            False,
            who,
            ref.ticket,
            f"the signature on {ref.via} is not valid for any agent",
            ref=ref,
        )
    # The reference signed for the sending agent wins over others on the same mail.
    mine = [r for r in good if sender_agent is not None and r.agent == sender_agent.name]
    ref = (mine or good)[0]
    assert ref.agent is not None
    if sender_agent is None or sender_agent.name != ref.agent:
        return Verdict(
            False,
            ref.agent,
            ref.ticket,
            f"{ref.via} is signed for agent {ref.agent}, but the mail is from "
            f"{shorten(sender, MAX_SHOWN_ADDRESS) or 'nobody'}",
            ref=ref,
        )
    agent = agent_by_name(ref.agent)
    assert agent is not None
    checked = auth(agent)
    factors = ("signature", "from", *checked.passed)
    if not checked.ok:
        return Verdict(
            False,
            ref.agent,
            ref.ticket,
            f"signed for {ref.agent} but sender authentication failed: {checked.reason}",
            factors,
            ref,
        )
    return Verdict(
        True, ref.agent, ref.ticket, f"signed for {ref.agent} via {ref.via}", factors, ref
    )


def aligned(domain: str, agent_domain: str) -> bool:
    """Relaxed alignment: equal, or one is a subdomain of the other."""
    if not domain:
        return False
    return (
        domain == agent_domain
        or agent_domain.endswith("." + domain)
        or (domain.endswith("." + agent_domain))
    )


def check_auth(
    settings: AgentMailSettings,
    msg: ParsedMessage,
    agent_domain: str,
    dkim_verify: Callable[[], str | None] | None = None,
) -> AuthCheck:
    """The configured DMARC/DKIM/SPF requirements against the trusted results."""
    required = [
        m
        for m, on in (
            ("dmarc", settings.require_dmarc),
            ("dkim", settings.require_dkim),
            ("spf", settings.require_spf),
        )
        if on
    ]
    results = trusted_results(
        msg.header_all("Authentication-Results"), settings.trusted_authserv_ids
    )
    passed = sorted({m for m, r, d in results if r == "pass" and aligned(d, agent_domain)})
    if not results and settings.dkim_verify_fallback and dkim_verify is not None:
        domain = dkim_verify()
        if domain is not None and aligned(domain, agent_domain):
            passed = ["dkim"]
            if "dmarc" in required:  # an aligned DKIM pass is a DMARC pass
                passed.append("dmarc")
    missing = [m for m in required if m not in passed]
    if missing:
        seen = ", ".join(f"{m}={r}" + (f" ({d})" if d else "") for m, r, d in results)
        where = seen or "no Authentication-Results from a trusted host"
        return AuthCheck(False, tuple(passed), f"no aligned {'/'.join(missing)} pass: {where}")
    return AuthCheck(True, tuple(passed))


def dkim_domain(raw: bytes, dnsfunc: Callable[..., bytes] | None = None) -> str | None:
    """The d= of a DKIM signature that verifies in-process (dkimpy), or None."""
    import dkim

    try:
        verifier = dkim.DKIM(raw)
        kwargs = {"dnsfunc": dnsfunc} if dnsfunc is not None else {}
        if not verifier.verify(**kwargs):
            return None
        domain = verifier.domain
    except Exception:  # dkimpy raises many kinds on hostile input
        return None
    if isinstance(domain, bytes):
        return domain.decode("ascii", "replace").lower()
    return str(domain).lower() if domain else None
