#!/usr/bin/env python3
"""Writes the labelled PII corpus tests/data/pii_corpus.tsv (to stdout with --stdout).

The corpus measures the on-device detector (include/specdec/privacy/) per class:
precision and recall of exact spans. It has three parts:

* generated positives: valid values of every class (Luhn-valid cards of the major
  schemes, mod-97-valid IBANs of 16 countries, assignable SSNs, NANP / E.164 / European
  national phone numbers, e-mail addresses, IPv4 / IPv6 addresses, secrets in their
  published formats) in varied sentences, some with context words and some without;
  forms that need context to be told apart from other numbers (bare ten-digit phone
  numbers, bare nine-digit SSNs) always come with a context word;
* generated hard negatives: look-alikes that fail validation (Luhn, mod-97, SSN area
  rules, octets > 255), version numbers, dates, ISBNs, order numbers, math, times,
  MAC addresses, UUIDs, hashes, public keys and certificates, words like "sk-learn";
* hand-written sentences below (HAND_POSITIVES, HAND_NEGATIVES) and the 24 KJV verse
  openings of models/kjv_val_openings.tsv with chapter:verse references.

Everything is drawn from one random.Random with a fixed seed, so the file is
reproducible; tests/test_pii_detector.cpp checks the committed file, and the
`pii_corpus_reproducible` test regenerates it and compares when Python 3 is present.

Format: '#' comment lines, then one example per line: id TAB labels TAB text. labels is
'-' or a ';'-separated list of KIND:begin-end (byte offsets into the UTF-8 text, end
exclusive). In text, backslash, newline and tab are written as \\\\, \\n and \\t.
"""
import base64
import ipaddress
import json
import os
import random
import sys

SEED = 20261205
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rng = random.Random(SEED)

# ----------------------------------------------------------------------------------------
# Markup: a labelled value is written OPEN KIND:value CLOSE (control bytes, so that brackets
# in templates stay plain text) and turned into text + byte spans. Hand-written sentences
# use [[KIND:value]], converted by `hand`.
OPEN, CLOSE = "\x01", "\x02"


def render(marked):
    """'a \x01EMAIL:x@y.org\x02 b' -> ('a x@y.org b', [('EMAIL', 2, 11)])"""
    out = b""
    spans = []
    rest = marked
    while True:
        i = rest.find(OPEN)
        if i < 0:
            out += rest.encode()
            break
        out += rest[:i].encode()
        j = rest.index(CLOSE, i)
        kind, value = rest[i + 1 : j].split(":", 1)
        begin = len(out)
        out += value.encode()
        spans.append((kind, begin, len(out)))
        rest = rest[j + 1 :]
    return out.decode(), spans


def mark(kind, value):
    return OPEN + kind + ":" + value + CLOSE


def hand(sentence):
    return sentence.replace("[[", OPEN).replace("]]", CLOSE)


# ----------------------------------------------------------------------------------------
# Value generators

FIRST = ["james", "mary", "john", "patricia", "robert", "jennifer", "michael", "linda", "david", "elizabeth",
         "anna", "lukas", "sofia", "mateo", "chloe", "hugo", "emma", "noah", "mia", "liam", "olivia",
         "yuki", "ravi", "fatima", "chen", "ivan", "zoe", "leon", "ines", "omar"]
LAST = ["smith", "johnson", "garcia", "miller", "davis", "martinez", "mueller", "schmidt", "dubois",
        "rossi", "tanaka", "kumar", "nguyen", "kowalski", "jansen", "silva", "novak", "berg", "oconnor",
        "haddad"]
DOMAINS = ["example", "mail", "post", "inbox", "acme", "contoso", "fabrikam", "university", "clinic",
           "northwind", "globex", "initech", "hooli", "umbrella-corp", "blue-sky"]
TLDS = ["com", "org", "net", "de", "fr", "io", "co.uk", "info", "edu", "nl", "museum", "technology",
        "com.au", "ch", "es"]


def email():
    f, l = rng.choice(FIRST), rng.choice(LAST)
    style = rng.randrange(7)
    local = [f"{f}.{l}", f"{f[0]}{l}", f"{f}_{l}{rng.randrange(100)}", f"{f}+{rng.choice(['news', 'shop', 'work'])}",
             f"{f}.{rng.choice('abcdefgh')}.{l}", f"{l}{rng.randrange(1950, 2010)}", f"{f}-{l}"][style]
    if rng.random() < 0.15:
        local = local.capitalize()
    dom = rng.choice(DOMAINS)
    if rng.random() < 0.25:
        dom = rng.choice(["mx", "eu", "staff", "students", "lists"]) + "." + dom
    return f"{local}@{dom}.{rng.choice(TLDS)}"


def digits(n):
    return "".join(rng.choice("0123456789") for _ in range(n))


def nanp_parts():
    area = str(rng.randrange(2, 10)) + digits(2)
    while area[1:] == "11":
        area = str(rng.randrange(2, 10)) + digits(2)
    exch = str(rng.randrange(2, 10)) + digits(2)
    return area, exch, digits(4)


def phone():
    """(text, needs_context)"""
    kind = rng.randrange(20)
    a, e, s = nanp_parts()
    if kind == 0: return f"({a}) {e}-{s}", False
    if kind == 1: return f"{a}-{e}-{s}", False
    if kind == 2: return f"{a}.{e}.{s}", False
    if kind == 3: return f"+1 {a} {e} {s}", False
    if kind == 4: return f"+1-{a}-{e}-{s}", False
    if kind == 5: return f"1-{a}-{e}-{s}", False
    if kind == 6: return f"+1 ({a}) {e}-{s}", False
    if kind == 7: return f"+1{a}{e}{s}", False
    if kind == 8: return f"{a} {e} {s}", True
    if kind == 9: return f"{a}{e}{s}", True
    if kind == 10:  # UK
        return rng.choice([f"+44 20 {digits(4)} {digits(4)}", f"020 {digits(4)} {digits(4)}",
                           f"07{digits(3)} {digits(6)}", f"+44 7{digits(3)} {digits(6)}",
                           f"01{digits(3)} {digits(6)}"]), False
    if kind == 11:  # Germany
        return rng.choice([f"+49 30 {digits(8)}", f"030 {digits(8)}", f"0171 {digits(7)}",
                           f"+49 171 {digits(7)}", f"030/{digits(8)}", f"089 {digits(7)}"]), False
    if kind == 12:  # France
        p = [digits(2) for _ in range(4)]
        first = str(rng.randrange(1, 8))
        return rng.choice([f"0{first} {' '.join(p)}", f"+33 {first} {' '.join(p)}",
                           f"0{first}.{'.'.join(p)}"]), False
    if kind == 13:  # Japan, Australia, India, Brazil
        return rng.choice([f"+81 3 {digits(4)} {digits(4)}", f"+61 2 {digits(4)} {digits(4)}",
                           f"+91 9{digits(4)} {digits(5)}", f"+55 11 9{digits(4)} {digits(4)}"]), False
    if kind == 14:  # Spain, Italy, Netherlands
        return rng.choice([f"+34 6{digits(2)} {digits(3)} {digits(3)}", f"+39 06 {digits(4)} {digits(4)}",
                           f"+31 6 {digits(8)}", f"+31 20 {digits(3)} {digits(4)}"]), False
    if kind == 15:  # compact E.164
        return "+" + rng.choice(["44", "49", "33", "34", "39", "61", "81"]) + str(rng.randrange(1, 10)) + digits(
            rng.randrange(7, 10)), False
    if kind == 16:  # Korea, Netherlands, Italy national
        return rng.choice([f"010-{digits(4)}-{digits(4)}", f"020 {digits(3)} {digits(4)}",
                           f"06 {digits(4)} {digits(4)}"]), False
    if kind == 17:  # 00 international prefix
        return f"00{rng.choice(['44', '49', '33'])} {rng.randrange(1, 10)}{digits(1)} {digits(4)} {digits(4)}", False
    if kind == 18:  # national, compact, 10-11 digits with trunk 0
        return "0" + str(rng.randrange(1, 10)) + digits(rng.randrange(8, 10)), True
    return f"+1 {a}-{e}-{s}", False


def luhn_ok(d):
    total = 0
    for i, ch in enumerate(reversed(d)):
        v = int(ch)
        if i % 2 == 1:
            v = v * 2 - 9 if v * 2 > 9 else v * 2
        total += v
    return total % 10 == 0


def luhn_complete(prefix, length):
    body = prefix + digits(length - len(prefix) - 1)
    for c in "0123456789":
        if luhn_ok(body + c):
            return body + c
    raise AssertionError


def card_number():
    brand = rng.randrange(8)
    if brand == 0: return luhn_complete("4", rng.choice([16, 16, 16, 13, 19]))
    if brand == 1: return luhn_complete(str(rng.randrange(51, 56)), 16)
    if brand == 2: return luhn_complete(str(rng.randrange(2221, 2721)), 16)
    if brand == 3: return luhn_complete(rng.choice(["34", "37"]), 15)
    if brand == 4: return luhn_complete(rng.choice(["6011", "65", str(rng.randrange(644, 650))]), 16)
    if brand == 5: return luhn_complete(str(rng.randrange(3528, 3590)), 16)
    if brand == 6: return luhn_complete(rng.choice(["36", "38", "300", "305"]), 14)
    return luhn_complete("62", rng.choice([16, 17, 18, 19]))


def group_card(d):
    style = rng.randrange(3)
    if style == 0:
        return d
    sep = " " if style == 1 else "-"
    if len(d) == 15:
        return sep.join([d[:4], d[4:10], d[10:]])
    if len(d) == 14:
        return sep.join([d[:4], d[4:10], d[10:]])
    return sep.join(d[i : i + 4] for i in range(0, len(d), 4))


IBAN_BBAN = {"DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 23, "ES": "n" * 20, "IT": "a" + "n" * 22,
             "NL": "aaaa" + "n" * 10, "BE": "n" * 12, "CH": "n" * 17, "AT": "n" * 16, "PL": "n" * 24,
             "SE": "n" * 20, "IE": "aaaa" + "n" * 14, "PT": "n" * 21, "NO": "n" * 11, "DK": "n" * 14,
             "FI": "n" * 14}


def iban_numeric(s):
    return int("".join(str(int(c, 36)) for c in s))


def iban_value():
    country = rng.choice(sorted(IBAN_BBAN))
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if c == "a" else rng.choice("0123456789")
                   for c in IBAN_BBAN[country])
    check = 98 - iban_numeric(bban + country + "00") % 97
    return f"{country}{check:02d}{bban}"


def group_iban(s):
    if rng.random() < 0.5:
        return s
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def ssn_value():
    while True:
        area = rng.randrange(1, 900)
        if area == 666:
            continue
        d = f"{area:03d}{rng.randrange(1, 100):02d}{rng.randrange(1, 10000):04d}"
        if d in ("078051120", "219099999", "123456789") or len(set(d)) == 1:
            continue
        return d


def ipv4_value():
    first = rng.choice([10, 172, 192, 203, 198, 81, 62, 151, 8, 100])
    return ".".join(str(x) for x in [first, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])


def ipv6_value():
    while True:
        groups = [rng.randrange(0, 65536) if rng.random() < 0.7 else 0 for _ in range(8)]
        groups[0] = rng.choice([0x2001, 0x2a00, 0x2600, 0xfd12, 0x2409, 0xfe80])
        style = rng.randrange(4)
        if style == 0:
            s = ":".join("%x" % g for g in groups)
        elif style == 1:
            s = ":".join("%04x" % g for g in groups)
        elif style == 2:
            start = rng.randrange(1, 6)
            for k in range(start, start + rng.randrange(2, 4)):
                groups[k] = 0
            s = ipaddress.IPv6Address(":".join("%x" % g for g in groups)).compressed
        else:
            s = "::ffff:" + ipv4_value()
        if rng.random() < 0.2:
            s = s.upper()
        explicit = [g for g in s.replace("::", ":").split(":") if g]
        n = len(explicit) + (1 if "." in s else 0)
        if "::" in s and n < 3:
            continue
        return s


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def rand(chars, n):
    return "".join(rng.choice(chars) for _ in range(n))


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def secret_value():
    kind = rng.randrange(12)
    if kind == 0: return rng.choice(["AKIA", "ASIA"]) + rand("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    if kind == 1: return rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rand(ALNUM, 36)
    if kind == 2: return "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59)
    if kind == 3: return rng.choice(["xoxb-", "xoxp-"]) + digits(12) + "-" + digits(12) + "-" + rand(ALNUM, 24)
    if kind == 4:
        while True:
            s = rand(ALNUM, 48)
            if any(c.isdigit() for c in s):
                return "sk-" + s
    if kind == 5:
        while True:
            s = rand(ALNUM + "-_", 64)
            if any(c.isdigit() for c in s):
                return "sk-proj-" + s
    if kind == 6: return rng.choice(["sk_live_", "sk_test_", "rk_live_"]) + rand(ALNUM, 24)
    if kind == 7: return "AIza" + rand(ALNUM + "-_", 35)
    if kind == 8:
        head = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
        body = {"sub": digits(8), "name": rng.choice(FIRST).capitalize(), "iat": 1700000000 + rng.randrange(10**7)}
        return b64url(head) + "." + b64url(body) + "." + rand(ALNUM + "-_", 43)
    if kind == 9:
        label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
        lines = [rand(ALNUM + "+/", 64) for _ in range(rng.randrange(2, 6))] + [rand(ALNUM + "+/", 20) + "=="]
        return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"
    if kind == 10:
        return rng.choice(["glpat-" + rand(ALNUM + "-_", 20), "npm_" + rand(ALNUM, 36), "hf_" + rand(ALNUM, 34)])
    return "xapp-1-" + rand("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 11) + "-" + digits(13) + "-" + rand(ALNUM, 32)


# ----------------------------------------------------------------------------------------
# Sentences

NEUTRAL = ["The meeting moved to Thursday afternoon.", "Please bring the slides and the budget sheet.",
           "Thanks again for your help last week!", "Let me know if anything else is needed.",
           "Zoë from the München office will join as well.", "The café on the corner opens at eight.",
           "We shipped the fix in the last release.", "I'll be out of office until Monday."]

TEMPLATES = {
    "EMAIL": (["You can email me at {}.", "Contact: {}", "Send the report to {} by Friday.",
               "my e-mail is {} thanks", "Write to {} for details."],
              ["Forwarding this from {} - see below.", "{} wrote: sounds good to me.",
               "cc {}; {}", "Ask {} about the onboarding.", "<{}>"]),
    "PHONE": (["Call me at {}.", "Phone: {}", "My mobile number is {}", "tel. {}", "You can reach me on {} after 6pm.",
               "Fax {} or mail.", "Please text {} when you arrive."],
              ["Ring the front desk, {}, and ask for Sam.", "Office {} (ask for billing).", "{} - Mon to Fri",
               "Emergency line {}"]),
    "CARD": (["Card number: {}", "Please charge my Visa {} for the order.", "credit card {} exp 09/28",
              "Use the debit card {} for the deposit."],
             ["Saved {} to my wallet.", "Number {} and CVV on the back.", "{} was declined yesterday."]),
    "IBAN": (["IBAN: {}", "Please wire the money to {}.", "Bank account {} (SEPA transfer).",
              "Transfer to IBAN {} by the end of the month."],
             ["Beneficiary {}, reference May rent.", "Use {} for the refund.", "{} is the new one."]),
    "US_SSN": (["SSN: {}", "My social security number is {}.", "ssn {} for the W-2 form",
                "Taxpayer SSN {} (primary applicant)"],
               []),
    "IPV4": (["The server is at {}.", "ssh admin@host or connect to {} directly.", "Ping {} to check the gateway.",
              "IP address: {}", "Allow traffic from {} in the firewall."],
             ["Logs show requests coming in from {} every minute.", "Set the DNS to {} and retry.",
              "{} responded with 503.", "Blocked {} after 5 failed logins."]),
    "IPV6": (["IPv6 address: {}", "Connect to [{}]:8080 for the admin page.", "The host resolves to {}.",
              "Whitelist {} on the server."],
             ["Traffic from {} spiked overnight.", "{} is the router's link address.", "Route via {} please."]),
    "SECRET": (["My API key is {}", "token: {}", "export SECRET={}", "Authorization: Bearer {}",
                "Here is the key, keep it safe:\n{}\n"],
               ["I pasted {} into the config by mistake.", "Rotate {} today.", "config = {{ 'key': '{}' }}"]),
}

SSN_FORMATS = [lambda d: f"{d[:3]}-{d[3:5]}-{d[5:]}"] * 6 + [lambda d: f"{d[:3]} {d[3:5]} {d[5:]}",
                                                             lambda d: d]


def value_for(kind):
    """(value, needs_context)"""
    if kind == "EMAIL": return email(), False
    if kind == "PHONE": return phone()
    if kind == "CARD": return group_card(card_number()), False
    if kind == "IBAN": return group_iban(iban_value()), False
    if kind == "US_SSN":
        d = ssn_value()
        f = rng.randrange(8)
        return (f"{d[:3]}-{d[3:5]}-{d[5:]}" if f < 6 else f"{d[:3]} {d[3:5]} {d[5:]}" if f == 6 else d), f >= 6
    if kind == "IPV4":
        v = ipv4_value()
        if rng.random() < 0.1:
            v += "/" + str(rng.choice([8, 16, 24, 32]))
        return v, False
    if kind == "IPV6": return ipv6_value(), False
    return secret_value(), False


def positive(kind):
    value, needs_context = value_for(kind)
    with_ctx, without_ctx = TEMPLATES[kind]
    pool = with_ctx if needs_context or not without_ctx or rng.random() < 0.5 else without_ctx
    template = rng.choice(pool)
    values = [mark(kind, value)]
    if template.count("{}") == 2:
        values.append(mark(kind, value_for(kind)[0] if kind == "EMAIL" else value))
    sentence = template.format(*values)
    if rng.random() < 0.3:
        sentence = rng.choice(NEUTRAL) + " " + sentence
    if rng.random() < 0.15:  # a second entity of another class
        other = rng.choice([k for k in TEMPLATES if k not in (kind, "US_SSN", "SECRET")])
        v2, _ = value_for(other)
        o_with, _ = TEMPLATES[other]
        sentence += " " + rng.choice(o_with).format(mark(other, v2))
    return sentence


# ----------------------------------------------------------------------------------------
# Hard negatives (generated)


def luhn_bad_card():
    d = card_number()
    last = str((int(d[-1]) + rng.randrange(1, 10)) % 10)
    return group_card(d[:-1] + last)


def bad_iban():
    s = iban_value()
    i = rng.randrange(4, len(s))
    while True:
        c = rng.choice("0123456789") if s[i].isdigit() else rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        if c != s[i]:
            break
    return group_iban(s[:i] + c + s[i + 1 :])


def bad_ssn():
    d = ssn_value()
    which = rng.randrange(4)
    if which == 0: d = "000" + d[3:]
    elif which == 1: d = "666" + d[3:]
    elif which == 2: d = str(rng.randrange(900, 1000)) + d[3:]
    elif which == 3: d = d[:3] + "00" + d[5:]
    return f"{d[:3]}-{d[3:5]}-{d[5:]}"


def isbn13():
    body = "978" + digits(9)
    s = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


def isbn10():
    body = digits(9)
    s = sum(int(c) * (10 - i) for i, c in enumerate(body))
    check = (11 - s % 11) % 11
    return body + ("X" if check == 10 else str(check))


def hard_negative():
    kind = rng.randrange(20)
    if kind == 0: return rng.choice(["Card number {} was rejected as invalid.", "Charge {} please.",
                                     "credit card {}"]).format(luhn_bad_card())
    if kind == 1: return rng.choice(["IBAN {} (typo?)", "Wire to {}."]).format(bad_iban())
    if kind == 2: return rng.choice(["SSN {} is not a valid number.", "Case file {}"]).format(bad_ssn())
    if kind == 3:
        v = f"{rng.randrange(10)}.{rng.randrange(30)}.{rng.randrange(30)}"
        return rng.choice([f"Upgrade to version {v} first.", f"Released v{v} today.", f"Python {v} is required.",
                           f"version {v}.{rng.randrange(100)} fixed the crash",
                           f"Firmware {v}.{rng.randrange(10)} breaks wifi.",
                           f"Build {rng.randrange(10, 12)}.0.{rng.randrange(19000, 23000)}.{rng.randrange(3000)}"])
    if kind == 4:
        y, m, d = rng.randrange(1950, 2030), rng.randrange(1, 13), rng.randrange(1, 29)
        return rng.choice([f"Due {y}-{m:02d}-{d:02d}.", f"Born {d:02d}.{m:02d}.{y}", f"on {m:02d}/{d:02d}/{y} at noon",
                           f"Timestamp {y}-{m:02d}-{d:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
                           f"{d} March {y}", f"from {y}-{m:02d}-{d:02d} to {y}-{m:02d}-{d + 1:02d}",
                           f"{d:02d}/{m:02d}/{y} {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"])
    if kind == 5:
        i13 = isbn13()
        i10 = isbn10()
        return rng.choice([f"ISBN {i13[:3]}-{i13[3]}-{i13[4:6]}-{i13[6:12]}-{i13[12]}", f"ISBN-13: {i13}",
                           f"ISBN {i10[0]}-{i10[1:4]}-{i10[4:9]}-{i10[9]}", f"see {i13} in the catalogue"])
    if kind == 6:
        return rng.choice([f"Order #{digits(9)} has shipped.", f"order no. {digits(4)}-{digits(4)}",
                           f"Invoice INV-{rng.randrange(2015, 2030)}-{digits(5)}",
                           f"Tracking number 1Z{rand('ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 16)}",
                           f"reference 00{digits(8)}", f"Ticket {digits(6)} closed", f"PO {digits(10)}",
                           f"Your order ID is ORD-{digits(3)}-{digits(2)}-{digits(4)}."])
    if kind == 7:
        a, b = rng.randrange(2, 999), rng.randrange(2, 999)
        return rng.choice([f"{a} * {b} = {a * b}", f"2^32 = 4294967296", f"x = {a} + {b} - 1", f"1e-{rng.randrange(2, 20)}",
                           f"{a}/{b} is about {a / b:.4f}", f"({a} + {b}) * 4 = {(a + b) * 4}",
                           f"pi = 3.14159265358979", f"sum {digits(4)} + {digits(4)}",
                           f"The population is {rng.randrange(1, 9)} {digits(3)} {digits(3)} {digits(3)}."])
    if kind == 8:
        return rng.choice([f"Meet at {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
                           "MAC " + ":".join("%02X" % rng.randrange(256) for _ in range(6)),
                           "uuid " + "-".join(rand("0123456789abcdef", n) for n in (8, 4, 4, 4, 12)),
                           "commit " + rand("0123456789abcdef", 40), "sha256 " + rand("0123456789abcdef", 64)])
    if kind == 9:
        return rng.choice(["pip install scikit-learn (sk-learn)", "xoxo, see you soon", "the AKIA prefix marks key ids",
                           "-----BEGIN PUBLIC KEY-----\n" + rand(ALNUM + "+/", 64) + "\n-----END PUBLIC KEY-----",
                           "-----BEGIN CERTIFICATE-----\n" + rand(ALNUM + "+/", 64) + "\n-----END CERTIFICATE-----",
                           "set token = ghp_ plus the rest", "eyJ is how base64 JSON starts",
                           "sk-" + rand("abcdefghijklmnopqrstuvwxyz", 12), "std::vector<int> v; a::b::c();",
                           "@Override public void run()", "user@localhost can log in", "npm i @types/node"])
    if kind == 10:
        return rng.choice([f"256.{rng.randrange(256)}.{rng.randrange(256)}.1 is not an address",
                           f"SNMP OID 1.3.6.1.2.1.{rng.randrange(100)}",
                           f"version {rng.randrange(1, 9)}.{rng.randrange(10)}.{rng.randrange(10)}.{rng.randrange(10)}",
                           f"0{rng.randrange(1, 9)}.0{rng.randrange(1, 9)}.0{rng.randrange(1, 9)}.0{rng.randrange(1, 9)}",
                           f"1.2.3.4.5.{rng.randrange(10)}"])
    if kind == 11:
        return rng.choice([f"ZIP 0{digits(4)}-{digits(4)}", f"between {rng.randrange(1900, 2000)}-{rng.randrange(2000, 2030)}",
                           f"score {rng.randrange(10)}-{rng.randrange(10)}", f"Room {digits(3)}, floor {rng.randrange(1, 9)}",
                           f"${rng.randrange(1, 999)},{digits(3)},{digits(3)}.{digits(2)}",
                           f"{digits(7)} points", f"Serial {digits(12)}"])
    return rng.choice(NEUTRAL)


# ----------------------------------------------------------------------------------------
# Hand-written examples

HAND_POSITIVES = [
    "Hi Tom, text me on [[PHONE:07700 900461]] or email [[EMAIL:tom.harris@gmail.com]] once you land.",
    "Patient DOB 03/04/1985, SSN [[US_SSN:219-45-8812]], insurance on file.",
    "The VPN endpoint moved from [[IPV4:198.51.100.23]] to [[IPV4:198.51.100.24]] last night.",
    "Paste this into .env: OPENAI_API_KEY=[[SECRET:sk-4f9Qz1xLmN8pR2sT6vW0yB3cD5eF7gH9jK1lM3nP5qR7sT9u]]",
    "Sehr geehrte Frau Müller, bitte überweisen Sie den Betrag auf [[IBAN:DE44 5001 0517 5407 3249 31]].",
    "Merci de rappeler au [[PHONE:06 12 34 56 78]] avant midi.",
    "Can you check why [[EMAIL:ops-alerts@status.example.io]] stopped receiving pages?",
    "Amex ending 0005 - full number [[CARD:3782 822463 10005]] - please update billing.",
    "ssh -i key.pem ubuntu@[[IPV4:203.0.113.45]]",
    "curl -H 'Authorization: Bearer [[SECRET:eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsIm5hbWUiOiJBZGEifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2Nzg5MA]]' https://api.example.com",
    "Our office line is [[PHONE:+1 (212) 555-0199]] and the fax is [[PHONE:+1 (212) 555-0198]].",
    "I think my card [[CARD:5555-5555-5555-4444]] was charged twice.",
    "Server log: connection reset by peer [[IPV6:2001:db8:3333:4444:5555:6666:7777:8888]] port 51234",
    "Here's the deploy token for CI: [[SECRET:ghp_R2d2C3p0BB8k2sO9xTq7LmZ4vW1yN6uJ3hFe]] (read-only)",
    "Reach our Berlin desk on [[PHONE:+49 30 90182000]] (mornings only).",
    "Please use [[IBAN:GB33BUKB20201555555555]] for the deposit.",
    "His social security number: [[US_SSN:536 22 1492]].",
    "AWS creds leaked in the repo: [[SECRET:AKIA2E0A8F3B244C9986]] - rotate now!",
    "Emails to [[EMAIL:J.Smith@Example.COM]] bounce.",
    "bind 0.0.0.0 is wrong; use [[IPV4:10.0.4.17]] instead",
    "The key file starts like this:\n[[SECRET:-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBx3Z]]",
    "Our toll-free line is [[PHONE:1-800-555-2371]], or [[PHONE:(800) 555-2372]] from abroad.",
    "Visa [[CARD:4012888888881881]] exp 11/27 cvc 123",
    "slack webhook token [[SECRET:xoxb-417239468523-1236457836412-Ab3dEf9hIjKlMnOpQrStUvWx]]",
    "Tokyo office: [[PHONE:+81 3 1234 5678]], Sydney office: [[PHONE:+61 2 9876 5432]].",
    "Ping me on WhatsApp [[PHONE:+919876543210]]",
    "SEPA: [[IBAN:FR14 2004 1010 0505 0001 3M02 606]], BIC PSSTFRPPPAR",
    "Replace [[IPV6:fe80:0:0:0:204:61ff:fe9d:f156]] with the new link-local address.",
    # Written as people write these values, without running the detector first.
    "my email is [[EMAIL:JOHN.DOE@GMAIL.COM]] (all caps, sorry)",
    "Email:[[EMAIL:bob@example.com]]",
    "(mailto:[[EMAIL:help@company.org]])",
    "reach me at [[EMAIL:first.last@sub.domain.co.jp]] or my cell [[PHONE:+1 415.555.2671]]",
    "UK office: [[PHONE:+44 (0)20 7946 0958]]",
    "Moscow: [[PHONE:+7 (495) 123-45-67]]",
    "Beijing [[PHONE:+86 138 0013 8000]], Dublin [[PHONE:+353 87 123 4567]]",
    "Sydney switchboard [[PHONE:(02) 9876 5432]]",
    "tel:[[PHONE:+14155552671]]",
    "call me on [[PHONE:555-2671]] tonight",
    "Card: [[CARD:5500 0000 0000 0004]] (business account)",
    "card no [[CARD:6011000990139424]]",
    "JCB [[CARD:3530111333300000]], expires 01/26",
    "[[IBAN:NL91ABNA0417164300]] is my Dutch account",
    "iban: [[IBAN:be68 5390 0754 7034]]",
    "Swiss account [[IBAN:CH93 0076 2011 6238 5295 7]]",
    "SSN#: [[US_SSN:457-55-5462]]",
    "open http://[[IPV4:192.168.1.1]]/admin in the browser",
    "psql -h [[IPV4:10.0.0.5]]:5432 -U app",
    "IP=[[IPV4:172.16.254.1]]",
    "ping6 [[IPV6:fe80::1ff:fe23:4567:890a]]%eth0",
    "the docs use [[IPV6:2001:db8::1]] as an example",
    "AWS_SECRET_ACCESS_KEY=[[SECRET:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY]]",
    "gitlab token [[SECRET:glpat-x7Rk2PqL9mZt4VwN8bYc]] for the runner",
    "//registry.npmjs.org/:_authToken=[[SECRET:npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8]]",
    "HF_TOKEN=[[SECRET:hf_QwErTyUiOpAsDfGhJkLzXcVbNm12345678]]",
    "[[SECRET:-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGX2k1sBCAC7s9pZ\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----]]",
]
HAND_NEGATIVES = [
    "For God so loved the world, that he gave his only begotten Son (John 3:16).",
    "In the beginning God created the heaven and the earth. Genesis 1:1-3",
    "The LORD is my shepherd; I shall not want. Psalm 23:1",
    "Charity suffereth long, and is kind (1 Corinthians 13:4-7).",
    "Jesus wept. John 11:35",
    "Version 2.4.1 fixed CVE-2023-44487 and CVE-2024-3094.",
    "Ubuntu 22.04.3 LTS ships Linux 6.2.0-39-generic.",
    "Chrome 120.0.6099.109 is the current stable release.",
    "The meeting is on 2024-03-15 at 10:30; dial-in details follow.",
    "ISBN 978-0-306-40615-7 and ISBN 0-306-40615-2 are the same book.",
    "Order #4532-1122 shipped via DHL, tracking 00340434161094042557.",
    "Invoice 2024-0042 total: $1,234.56 (net 30).",
    "The matrix [[1, 2], [3, 4]] has determinant -2.",
    "e = 2.718281828459045 and sqrt(2) = 1.4142135623730951",
    "Call the function with f(3, 4) = 25 and g(1) = 0.",
    "Use std::chrono::system_clock::now() and std::map<int, int>.",
    "Decorators like @property and @staticmethod are built in.",
    "Lines 1234-5678 of the log are noise.",
    "The range 10-20-30 was chosen arbitrarily.",
    "He ran 5000 m in 13:45.21 and 10000 m in 28:30.05.",
    "Coordinates 51.5074, -0.1278 (London).",
    "Set timeout=30s, retries=3, backoff=1.5.",
    "Temperature 21.5 C, humidity 45 %, pressure 1013.25 hPa.",
    "See RFC 4291 section 2.2 and RFC 5952.",
    "The tests pass on gcc 12.2.0 and clang 14.0.6.",
    "The model file is llama-1.2.3.4-q8.gguf.",
    "No personal data here, just a recipe: 200 g flour, 2 eggs, 250 ml milk.",
    "The parcel weighs 4111 g and costs 11.11 EUR.",
    "Dial 911 in an emergency or 112 in Europe.",
    "Page 555 of 1234, chapter 12.",
    # Written as such numbers appear, without running the detector first.
    "Meeting ID: 845 1234 5678, passcode 123456",
    "Zoom ID 812 345 6789",
    "UPC 036000291452 on the back of the box",
    "USPS tracking 9400 1000 0000 0000 0000 00",
    "Version 10.0.0.1 of the firmware is out.",
    "docker run -p 8080:80 nginx:1.25",
    "Dates: 12/25/2023, 2023.12.25 and 25.12.2023",
    "See Chapter 3.2.1.4 and Figure 10.1.2.3.",
    "The price is 4,111,111,111.11 yen.",
    "CUSIP 037833100",
    "IMEI 490154203237518",
    "mask 255.255.255.0, loopback 127.0.0.1, bind 0.0.0.0",
    "hex 0x7fffffff and 0xdeadbeef",
    "Luke 2:1-14 and Matthew 5:3-12",
    "1 Kings 8:27, 2 Chronicles 7:14, Psalm 119:105",
]


def kjv_negatives():
    path = os.path.join(ROOT, "models", "kjv_val_openings.tsv")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            _, ref, verse = line.rstrip("\n").split("\t")
            out.append(f"{verse} ({ref}:1)")
            out.append(f"{ref}:{rng.randrange(1, 30)}-{rng.randrange(30, 40)} {verse[:60]}")
    return out


# ----------------------------------------------------------------------------------------

def escape(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def main():
    rows = []
    kinds = ["EMAIL", "PHONE", "CARD", "IBAN", "US_SSN", "IPV4", "IPV6", "SECRET"]
    for kind in kinds:
        for i in range(180):
            rows.append((f"gen-{kind.lower()}-{i:03d}", render(positive(kind))))
    for i in range(700):
        rows.append((f"gen-neg-{i:03d}", (hard_negative(), [])))
    for i, s in enumerate(HAND_POSITIVES):
        rows.append((f"hand-pos-{i:03d}", render(hand(s))))
    for i, s in enumerate(HAND_NEGATIVES):
        rows.append((f"hand-neg-{i:03d}", (s, [])))
    for i, s in enumerate(kjv_negatives()):
        rows.append((f"kjv-neg-{i:03d}", (s, [])))
    out = sys.stdout if "--stdout" in sys.argv else open(os.path.join(ROOT, "tests", "data", "pii_corpus.tsv"), "w",
                                                         encoding="utf-8", newline="\n")
    out.write("# Labelled PII corpus, generated by scripts/gen_pii_corpus.py (seed %d); do not edit by hand.\n" % SEED)
    out.write("# id\tlabels (KIND:begin-end byte offsets, ';'-separated, or -)\ttext (\\\\, \\n, \\t escaped)\n")
    for rid, (text, spans) in rows:
        assert "\t" not in text
        labels = ";".join(f"{k}:{b}-{e}" for k, b, e in spans) or "-"
        out.write(f"{rid}\t{labels}\t{escape(text)}\n")
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
