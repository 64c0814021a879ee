"""Writes bench/data/redaction_set.jsonl: 300 labelled chat lines for bench/redaction.py.

    python bench/data/make_redaction_set.py

Hand-written templates of team-chat lines (questions, pasted config, logs, code), filled with fake
values in the published formats of each provider's keys (the documented example keys such as AWS's
AKIAIOSFODNN7EXAMPLE and test card numbers, and random strings of the right shape) and synthetic
personal data. About a third of the lines hold nothing to redact but look like they might: commit
hashes, UUIDs, versions, IPs, timestamps, order numbers, type annotations. Each line records the
character spans that must be redacted and their kind. Seeded: the file is reproducible.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).with_name("redaction_set.jsonl")
rnd = random.Random(20261127)


def rs(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def luhn_card(prefix: str, length: int) -> str:
    digits = [int(c) for c in prefix] + [rnd.randint(0, 9) for _ in range(length - len(prefix) - 1)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def spaced(card: str, sep: str) -> str:
    return sep.join(card[i : i + 4] for i in range(0, len(card), 4)) if sep else card


def iban() -> str:
    country, bank = rnd.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    body = "".join(rnd.choice(string.digits) for _ in range(bank))
    if country in ("GB", "NL"):
        body = "".join(rnd.choice(string.ascii_uppercase) for _ in range(4)) + body[4:]
    moved = body + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    raw = f"{country}{check:02d}{body}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4)) if rnd.random() < 0.6 else raw


B64URL = string.ascii_letters + string.digits + "_-"
UPPER_DIGITS = string.ascii_uppercase + string.digits


def github() -> str:
    if rnd.random() < 0.7:
        return rnd.choice(["ghp_", "gho_", "ghs_"]) + rs(36)
    return "github_pat_11" + rs(20, UPPER_DIGITS) + "_" + rs(59)


def slack() -> str:
    if rnd.random() < 0.7:
        prefix = rnd.choice(["xoxb-", "xoxp-"])
        return prefix + f"{rnd.randint(10**9, 10**10)}-{rnd.randint(10**12, 10**13)}-{rs(24)}"
    return f"xapp-1-A{rs(10, UPPER_DIGITS)}-{rnd.randint(10**12, 10**13)}-" + rs(64, "0123456789abcdef")


SECRETS = {
    "openai": lambda: rnd.choice(["sk-", "sk-proj-", "sk-svcacct-"]) + rs(rnd.choice([32, 48, 64]), B64URL),
    "anthropic": lambda: "sk-ant-api03-" + rs(80, B64URL) + "AA",
    "aws": lambda: rnd.choice(["AKIA", "ASIA"]) + rs(16, string.ascii_uppercase + "234567"),
    "github": github,
    "slack": slack,
    "stripe": lambda: rnd.choice(["sk_live_", "sk_test_", "rk_live_", "whsec_"]) + rs(rnd.choice([24, 99])),
    "google": lambda: "AIza" + rs(35, B64URL),
    "jwt": lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + rs(40, B64URL) + "." + rs(43, B64URL),
}
PASSWORDS = ["hunter2!", "Tr0ub4dor&3", "correct-horse-battery", "P@ssw0rd2024", "s3cr3t_pw", "Zq8#kd02LmX"]
NAMES = ["alice", "bob", "chen.wei", "priya_k", "j.smith", "m.garcia", "ops-team", "noreply"]
DOMAINS = ["example.com", "acme.io", "mail.example.org", "corp.example.net", "uni.example.edu"]
PHONES = [
    "+1 415-555-0132",
    "+44 20 7946 0958",
    "(212) 555-0199",
    "+49 30 901820",
    "020 7946 0321",
    "+33 1 23 45 67 89",
    "415-555-0187",
    "+61 2 9876 5432",
    "(03) 9555 0123",
]

# (template, kind of the slot). {v} is the value that must be redacted.
POSITIVE = [
    ("my {name} key is {v}, why does the API say 401?", "secret"),
    ("I set OPENAI_API_KEY={v} in .env but the bot still says no key", "secret"),
    ("export AWS_ACCESS_KEY_ID={v}", "secret"),
    ('curl -H "Authorization: Bearer {v}" https://api.example.com/v1/me', "secret"),
    ("the token in CI is {v} — can someone rotate it?", "secret"),
    ('config.json has "apiKey": "{v}" and it works locally', "secret"),
    ("oops, pasted the wrong thing: {v}", "secret"),
    ("{v}", "secret"),
    ("git clone https://{v}@github.com/acme/app.git fails with 403", "secret"),
    ("headers = {'x-api-key': '{v}'}", "secret"),
]
PASSWORD_LINES = [
    "DATABASE_URL=postgres://app:{v}@db.internal:5432/prod",
    "connect with mysql://root:{v}@10.0.0.5/shop and tell me why it times out",
    "password={v}",
    'db_password: "{v}"',
    "my wifi password is set as PASSWORD={v} in the script",
    "redis://default:{v}@cache.acme.io:6379/0 refuses connections",
    'settings: {"password": "{v}", "user": "admin"}',
    "SMTP_PASS={v}",
]
EMAIL_LINES = [
    "can you email {v} the summary?",
    "git config user.email {v} does not stick",
    "Contact: {v}",
    "forward the logs to {v} please",
    "why does Outlook bounce mail to <{v}>?",
]
PHONE_LINES = [
    "call me on {v} if the deploy breaks",
    "the on-call number is {v}",
    "customer left {v} as callback",
    "Phone: {v}",
]
CARD_LINES = [
    "test payment failed for card {v} exp 12/28",
    "customer says {v} was charged twice",
    'card_number = "{v}"',
    "refund to {v} please",
]
IBAN_LINES = [
    "pay the invoice to IBAN {v}",
    "the supplier's account: {v}, reference INV-2291",
]
KEY_LINES = [
    "here is my deploy key, why does ssh reject it?\n{v}\nthanks",
    "{v}",
]

HARD = [
    ("my password is {v} but it says invalid", "Autumn-Leaves-88", "secret"),
    ("the new pw is {v}", "Kx9!mQ2#", "secret"),
    ("call 4155550132 or {v}", "4155550187", "phone"),
    ("the datadog app key {v} does not work", "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f2", "secret"),
    ("ssh in as root with {v}", "Winter2025!", "secret"),
    ("twilio auth {v}", "SK2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d", "secret"),
    ("mail me at alice at example dot com or {v}", "alice(at)example.com", "email"),
    ("my number: {v}", "0049 30 1234567", "phone"),
]

NEGATIVE = [
    "how do I reverse a list in Python?",
    "def login(user: str, password: str) -> bool:",
    "password = os.environ['DB_PASSWORD']",
    "token = get_token()",
    "upgrade from 1.2.3 to 2.0.1 on 192.168.1.10 before 2024-01-15",
    "commit 8965e0c4b1f2a9d3e7c6b5a4f3e2d1c0b9a8f7e6 broke the build",
    "request id 3f2b8c1e-9d4a-4e6f-8b7c-1a2b3c4d5e6f timed out",
    "order 1234567890123 shipped",
    "the p99 went from 340 ms to 1200 ms at 14:32:05",
    "use the token bucket algorithm for rate limits",
    "what's the difference between sk-learn and scikit-learn?",
    "our API key rotation policy is 90 days",
    "SELECT * FROM users WHERE email = $1",
    "the secret to good sourdough is time",
    "port 5432, pid 48213, uid 1000",
    "what does `ghp_` mean at the start of a GitHub token?",
    "set password: <your password here> in the config",
    "export PASSWORD=${DB_PASSWORD}",
    "Auth: we use OAuth2 with PKCE",
    "my phone died, back at 3pm",
    "compute 2**64 - 1 = 18446744073709551615",
    "ISBN 978-3-16-148410-0 is the book",
    "build 2024.11.27.1543 is on staging",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "the AWS region is eu-west-1 and the bucket is acme-logs-2024",
    "write a haiku about autumn",
    "is 4111 a prime number?",
    "the meeting is in room 12-104 at 10:30",
    "Python 3.11.6, numpy 1.26.4, torch 2.1.0",
    "explain what a JWT is and how the signature works",
    "why does `docker run -p 8080:80 nginx` not answer on localhost?",
    "I get HTTP 429 with retry-after: 20",
    "the invoice number is INV-2024-000187",
    "latitude 51.5072, longitude -0.1276",
    "translate 'good morning' into French",
    "git log --oneline | head -20",
    "the Slack channel id is C0123ABCD and the user is U0456EFGH",
    "use secrets.token_hex(32) to make one",
    "our password policy needs 12 characters",
    "how many seconds in a year? 31536000",
]


def line(template: str, value: str, kind: str) -> dict:
    start = template.index("{v}")
    text = template.replace("{v}", value)
    return {"text": text, "spans": [{"start": start, "end": start + len(value), "kind": kind}]}


def fill_negative(t: str) -> dict:
    return {"text": t, "spans": []}


def main() -> None:
    rows: list[dict] = []
    providers = list(SECRETS)
    for i in range(100):  # provider keys and tokens
        name = providers[i % len(providers)]
        template, _ = POSITIVE[i % len(POSITIVE)]
        template = template.replace("{name}", name)
        if "https://{v}@" in template and name not in ("github",):
            template = "the {name} key {v} leaked in the logs".replace("{name}", name)
        rows.append(line(template, SECRETS[name](), "secret"))
    for i in range(24):
        rows.append(line(PASSWORD_LINES[i % len(PASSWORD_LINES)], rnd.choice(PASSWORDS) + str(i), "secret"))
    for i in range(4):
        key = "-----BEGIN {t}PRIVATE KEY-----\n{b}\n{b2}\n-----END {t}PRIVATE KEY-----".format(
            t=rnd.choice(["", "RSA ", "OPENSSH ", "EC "]), b=rs(64, string.ascii_letters + "+/"), b2=rs(40)
        )
        rows.append(line(KEY_LINES[i % 2], key, "secret"))
    for i in range(25):
        email = f"{rnd.choice(NAMES)}{rnd.choice(['', '+alerts', str(i)])}@{rnd.choice(DOMAINS)}"
        rows.append(line(EMAIL_LINES[i % len(EMAIL_LINES)], email, "email"))
    for i in range(18):
        rows.append(line(PHONE_LINES[i % len(PHONE_LINES)], PHONES[i % len(PHONES)], "phone"))
    for i in range(16):
        card = luhn_card(rnd.choice(["4", "51", "55", "37", "6011"]), 16)
        rows.append(line(CARD_LINES[i % len(CARD_LINES)], spaced(card, rnd.choice(["", " ", "-"])), "card"))
    for i in range(6):
        rows.append(line(IBAN_LINES[i % len(IBAN_LINES)], iban(), "iban"))
    # two secrets in one line
    for _ in range(7):
        a, b = SECRETS["github"](), f"{rnd.choice(NAMES)}@{rnd.choice(DOMAINS)}"
        text = f"{b} pushed with {a} by mistake"
        rows.append(
            {
                "text": text,
                "spans": [
                    {"start": 0, "end": len(b), "kind": "email"},
                    {"start": len(b) + 13, "end": len(b) + 13 + len(a), "kind": "secret"},
                ],
            }
        )
    # hard cases the patterns are not built for: prose passwords, bare digit phones, unprefixed keys
    for template, value, kind in HARD:
        rows.append(line(template, value, kind))
    negatives = [fill_negative(t) for t in NEGATIVE]
    while len(rows) + len(negatives) < 300:
        # further harmless lines: numbers and ids of every shape
        negatives.append(
            fill_negative(
                rnd.choice(
                    [
                        f"ticket #{rnd.randint(1000, 99999)} is still open",
                        f"deploy {rs(7, '0123456789abcdef')} took {rnd.randint(2, 90)} s",
                        f"memory at {rnd.randint(40, 99)}% on node-{rnd.randint(1, 40)}",
                        f"version {rnd.randint(0, 9)}.{rnd.randint(0, 30)}.{rnd.randint(0, 99)} fixed it",
                        f"host 10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)} is down",
                        f"user id {rnd.randint(10**6, 10**9)} cannot log in",
                        f"the run at 2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d} failed",
                    ]
                )
            )
        )
    rows += negatives
    rnd.shuffle(rows)
    for r in rows:
        for s in r["spans"]:
            assert r["text"][s["start"] : s["end"]], r
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:300]), encoding="utf-8")
    print(f"wrote {min(len(rows), 300)} lines to {OUT}")


if __name__ == "__main__":
    main()
