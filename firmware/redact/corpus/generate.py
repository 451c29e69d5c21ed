#!/usr/bin/env python3
"""Generates the labelled redaction corpus: call-centre and banking sentences with PII and
with look-alikes that are not PII.

    python3 firmware/redact/corpus/generate.py > firmware/redact/corpus/corpus.jsonl

Deterministic (seeded); the committed corpus.jsonl is what the tests read. One JSON object
per line:

    {"text": "...", "pii": [{"kind": "card", "start": 12, "end": 31}, ...],
     "decoys": [{"kind": "order", "start": 40, "end": 50}, ...]}

Offsets are UTF-8 byte offsets into "text", end exclusive. `pii` kinds: card, cvv, ssn,
phone, email, ip, name, address. `decoys` label the look-alikes (order, tracking, amount,
date, time, account, reference, ticket, confirmation, percent, version, quantity, routing,
luhn_fail, ssn_invalid, mac, sku) that must survive redaction.

Labelling conventions: a name span is the name without its title ("Dr. [Okafor]"); an
address span runs from the house number (or "P.O. Box") through unit, city, state and ZIP
when they are written together; a ZIP said alone is an address; a CVV span is the digits.

All values are fictitious: phone numbers in 555-0100..0199 (and the UK, French and
Australian drama ranges), emails under example.com/.org/.net, IPs from the documentation
ranges, SSNs random in the valid ranges, card numbers the brands' published test numbers or
random Luhn-valid numbers in the brands' ranges.
"""

import json
import random
import sys

SEED = 17
N_SENTENCES = 2600

R = random.Random(SEED)

# ---------------------------------------------------------------------------- values


def luhn_digit(partial):
    s = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        s += d
    return str((10 - s % 10) % 10)


def luhn_ok(num):
    return luhn_digit(num[:-1]) == num[-1]


BRANDS = [
    # (prefixes, length, grouping)
    (["4"], 16, [4, 4, 4, 4]),
    (["4"], 13, [4, 4, 4, 1]),
    (["4"], 19, [4, 4, 4, 4, 3]),
    (["51", "52", "53", "54", "55", "2221", "2720", "2300"], 16, [4, 4, 4, 4]),
    (["34", "37"], 15, [4, 6, 5]),
    (["6011", "65", "644"], 16, [4, 4, 4, 4]),
    (["36", "38"], 14, [4, 6, 4]),
    (["3528", "3589", "3566"], 16, [4, 4, 4, 4]),
    (["62"], 16, [4, 4, 4, 4]),
    (["62"], 19, [4, 4, 4, 4, 3]),
]

TEST_CARDS = [
    "4111111111111111", "4012888888881881", "4242424242424242", "5555555555554444",
    "5105105105105100", "2223003122003222", "378282246310005", "371449635398431",
    "6011111111111117", "6011000990139424", "30569309025904", "38520000023237",
    "3530111333300000", "3566002020360505", "6200000000000005",
]


def group(num, groups, sep):
    if sep is None:
        return num
    out, i = [], 0
    for g in groups:
        out.append(num[i:i + g])
        i += g
    if i < len(num):
        out.append(num[i:])
    return sep.join(x for x in out if x)


def default_groups(n):
    return {15: [4, 6, 5], 14: [4, 6, 4]}.get(n, [4] * (n // 4) + ([n % 4] if n % 4 else []))


def card():
    sep = R.choice([" ", " ", "-", None])
    if R.random() < 0.35:
        num = R.choice(TEST_CARDS)
        return group(num, default_groups(len(num)), sep)
    prefixes, n, groups = R.choice(BRANDS)
    p = R.choice(prefixes)
    body = p + "".join(R.choice("0123456789") for _ in range(n - len(p) - 1))
    return group(body + luhn_digit(body), groups, sep)


def luhn_fail(n=16):
    """A card-shaped number that fails Luhn (an order or gift-card number)."""
    p = R.choice(["4", "5", "6", "3", "1", "9"])
    body = p + "".join(R.choice("0123456789") for _ in range(n - 2))
    bad = str((int(luhn_digit(body)) + R.randint(1, 9)) % 10)
    return group(body + bad, default_groups(n), R.choice([" ", "-", None]))


def cvv(amex=False):
    return "".join(R.choice("0123456789") for _ in range(4 if amex else 3))


def ssn(sep=None):
    while True:
        a = R.randint(1, 899)
        if a != 666:
            break
    g, s = R.randint(1, 99), R.randint(1, 9999)
    if sep is None:
        sep = R.choice(["-", "-", " "])
    return f"{a:03d}{sep}{g:02d}{sep}{s:04d}"


def ssn_invalid():
    a = R.choice([0, 666, R.randint(900, 999)])
    return f"{a:03d}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}"


def area():
    while True:
        a = R.randint(201, 989)
        s = str(a)
        if s[1:] != "11" and s[1] != "9":
            return s


def line():
    return f"01{R.randint(0, 99):02d}"


def phone():
    a, l = area(), line()
    return R.choice([
        f"({a}) 555-{l}", f"({a})555-{l}", f"{a}-555-{l}", f"{a}.555.{l}", f"{a} 555 {l}",
        f"+1 {a} 555 {l}", f"+1 ({a}) 555-{l}", f"+1-{a}-555-{l}", f"1-{a}-555-{l}",
        f"1 ({a}) 555-{l}", f"+1.{a}.555.{l}", f"1-800-555-{l}", f"(888) 555-{l}",
    ])


def phone_bare():
    return R.choice([f"{area()}555{line()}", f"1{area()}555{line()}"])


def phone_intl():
    return R.choice([
        f"+44 20 7946 0{R.randint(0, 999):03d}", f"+44 161 496 0{R.randint(0, 999):03d}",
        f"+33 1 99 00 {R.randint(10, 99)} {R.randint(10, 99)}",
        f"+61 2 5550 {R.randint(1000, 9999)}", f"+44 7700 900{R.randint(0, 999):03d}",
    ])


FIRSTS_COMMON = [
    "James", "Maria", "Robert", "Jennifer", "Michael", "Linda", "David", "Sarah", "Daniel",
    "Jessica", "Kevin", "Emily", "Brian", "Michelle", "Carlos", "Ana", "Wei", "Fatima",
    "Ahmed", "Priya", "Elena", "Rachel", "Patrick", "Nicole",
]
FIRSTS_RARE = [
    "Oluwaseun", "Thandiwe", "Siddharth", "Kenji", "Bronwyn", "Anahera", "Dmitri", "Ingrid",
    "Rafael", "Leilani", "Tariq", "Nkechi", "Mateo", "Svetlana", "Haruto", "Ximena", "Aarav",
    "Zainab", "Björn", "Niamh", "José", "Zoë",
]
LASTS = [
    "Smith", "Johnson", "Nguyen", "Garcia", "O'Brien", "McDonald", "Okafor", "Raman",
    "Kowalski", "Smith-Jones", "Álvarez", "Haddad", "Tanaka", "Rossi", "Schmidt", "Patel",
    "Kim", "Andersen", "Dubois", "Müller", "Williams", "Brown", "Lopez", "Chen",
]
TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Mr", "Ms"]


def first():
    return R.choice(FIRSTS_COMMON) if R.random() < 0.6 else R.choice(FIRSTS_RARE)


def last():
    return R.choice(LASTS)


def full_name():
    return f"{first()} {last()}"


STREETS = ["Oak", "Maple", "Main", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill",
           "Sunset", "Park", "Willow", "River", "Highland", "Magnolia", "Church", "Mill"]
SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln",
            "Drive", "Dr", "Court", "Ct", "Way", "Place", "Terrace", "Circle", "Parkway"]
CITIES = [("Springfield", "IL"), ("Austin", "TX"), ("San Jose", "CA"), ("Portland", "OR"),
          ("Columbus", "OH"), ("Raleigh", "NC"), ("Denver", "CO"), ("Madison", "WI"),
          ("Tampa", "FL"), ("Albany", "NY"), ("Salt Lake City", "UT"), ("Boise", "ID")]


def zip5():
    return f"{R.randint(10000, 99950)}"


def street():
    n = str(R.randint(1, 9999))
    if R.random() < 0.1:
        n += R.choice("AB")
    d = R.choice(["", "", "", "N ", "S ", "E ", "W ", "North ", "NW "])
    name = R.choice(STREETS)
    if R.random() < 0.2:
        name += " " + R.choice(["Tree", "View", "Ridge", "Creek"])
    if R.random() < 0.08:
        name = R.choice(["5th", "42nd", "3rd", "21st"])
    s = f"{n} {d}{name} {R.choice(SUFFIXES)}"
    if R.random() < 0.25:
        s += R.choice([", Apt ", " Apt ", ", Suite ", ", Unit ", " #"]) + R.choice(
            ["4B", "12", "305", "7", "2C"])
    return s


def address_full():
    c, st = R.choice(CITIES)
    tail = R.choice([f", {c}, {st} {zip5()}", f", {c}, {st}", f" {c} {st} {zip5()}",
                     f", {c}, {st} {zip5()}-{R.randint(1000, 9999)}"])
    return street() + tail


def city_state_zip():
    c, st = R.choice(CITIES)
    return f"{c}, {st} {zip5()}"


def po_box():
    return R.choice(["P.O. Box ", "PO Box ", "P.O. box "]) + str(R.randint(1, 99999))


def email():
    f, l = R.choice(FIRSTS_COMMON + FIRSTS_RARE[:5]).lower(), R.choice(LASTS[:12]).lower()
    l = l.replace("'", "")
    local = R.choice([f"{f}.{l}", f"{f[0]}{l}", f"{f}_{l}{R.randint(1, 99)}", f"{f}+bills",
                      f"{l}.{f}"])
    return local + "@" + R.choice(["example.com", "example.org", "example.net",
                                   "mail.example.com", "example.co.uk"])


def email_spoken():
    f, l = R.choice(FIRSTS_COMMON).lower(), R.choice(LASTS[:3]).lower()
    return R.choice([f"{f} dot {l} at example dot com", f"{f[0]}{l} at example dot org",
                     f"{f} underscore {l} at example dot net"])


def ipv4():
    return R.choice([f"192.0.2.{R.randint(1, 254)}", f"198.51.100.{R.randint(1, 254)}",
                     f"203.0.113.{R.randint(1, 254)}", f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"])


def ipv6():
    return R.choice([f"2001:db8::{R.randint(1, 0xffff):x}",
                     f"2001:db8:{R.randint(1, 0xffff):x}:{R.randint(1, 0xffff):x}::{R.randint(1, 0xff):x}",
                     f"2001:0db8:85a3:0000:0000:8a2e:0370:{R.randint(0x1000, 0xffff):04x}",
                     f"fe80::{R.randint(1, 0xffff):x}:{R.randint(1, 0xffff):x}"])


# Look-alikes (decoys).

def order():
    return R.choice([str(R.randint(10**7, 10**10)), f"{R.randint(100, 999)}-{R.randint(1000000, 9999999)}-{R.randint(1000000, 9999999)}",
                     f"#{R.randint(100000, 9999999)}", f"A{R.randint(10**8, 10**9)}",
                     str(R.randint(10**9, 10**10 - 1))])


def tracking():
    k = R.random()
    if k < 0.3:
        return "1Z" + "".join(R.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(6)) + "".join(R.choice("0123456789") for _ in range(10))
    if k < 0.5:
        n = "".join(R.choice("0123456789") for _ in range(R.choice([12, 15])))
        return n
    if k < 0.8:
        n = "94" + "".join(R.choice("0123456789") for _ in range(20))
        return " ".join(n[i:i + 4] for i in range(0, 22, 4))
    # A 16–20 digit number that fails Luhn.
    n = R.choice([16, 18, 20])
    body = "".join(R.choice("0123456789") for _ in range(n - 1))
    bad = str((int(luhn_digit(body)) + 3) % 10)
    return body + bad


def amount():
    return R.choice([f"${R.randint(1, 9999):,}.{R.randint(0, 99):02d}", f"${R.randint(1, 999)}",
                     f"{R.randint(10, 9999)} dollars", f"${R.randint(1000, 99999):,}",
                     f"USD {R.randint(100, 99999)}.{R.randint(0, 99):02d}"])


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def date():
    y, m, d = R.randint(2019, 2026), R.randint(1, 12), R.randint(1, 28)
    return R.choice([f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}",
                     f"{d} {MONTHS[m - 1]} {y}", f"{m}/{d}", f"{d:02d}.{m:02d}.{y}"])


def time():
    return R.choice([f"{R.randint(1, 12)}:{R.randint(0, 59):02d} {R.choice(['AM', 'PM', 'am', 'pm'])}",
                     f"{R.randint(0, 23):02d}:{R.randint(0, 59):02d}",
                     f"{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}"])


def account():
    return R.choice([str(R.randint(10**7, 10**12)), f"{R.randint(1000, 9999)}-{R.randint(100000, 999999)}",
                     "".join(R.choice("0123456789") for _ in range(R.choice([9, 10, 11, 12])))])


def reference():
    return R.choice([f"REF-{R.randint(10000, 99999)}-{R.choice(['XK', 'QZ', 'AB'])}",
                     f"{R.randint(100, 999)}-{R.randint(10, 99)}-{R.randint(1000, 9999)}X",
                     f"RX{R.randint(10**6, 10**7)}", f"INV-{R.randint(2019, 2026)}-{R.randint(1, 99999):05d}"])


def ticket():
    return R.choice([f"INC{R.randint(1, 9999999):07d}", f"CS-{R.randint(100000, 999999)}",
                     str(R.randint(10**5, 10**9)), f"#{R.randint(1000, 99999)}"])


def confirmation():
    return "".join(R.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(R.choice([6, 8, 10])))


def percent():
    return R.choice([f"{R.randint(1, 99)}%", f"{R.randint(0, 29)}.{R.randint(0, 99)}%",
                     f"{R.randint(1, 30)} percent"])


def version():
    return R.choice([f"v{R.randint(1, 20)}.{R.randint(0, 30)}.{R.randint(0, 99)}",
                     f"version {R.randint(1, 20)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 999)}",
                     f"{R.randint(1, 15)}.{R.randint(0, 9)}"])


def quantity():
    return R.choice([f"{R.randint(2, 500)} units", f"{R.randint(2, 40)} boxes",
                     f"{R.randint(100, 99999)} minutes", f"{R.randint(2, 12)} {R.choice(['pallets', 'cases', 'lines'])}"])


def routing():
    # ABA routing numbers: nine digits, checksum-valid, shaped like an SSN.
    while True:
        d = [R.randint(0, 9) for _ in range(8)]
        d[0] = R.choice([0, 1, 2, 3])
        for c in range(10):
            x = d + [c]
            if (3 * (x[0] + x[3] + x[6]) + 7 * (x[1] + x[4] + x[7]) + (x[2] + x[5] + x[8])) % 10 == 0:
                return "".join(map(str, x))


def mac():
    return ":".join(f"{R.randint(0, 255):02X}" for _ in range(6))


def sku():
    return R.choice([str(R.randint(10**11, 10**12 - 1)), f"SKU-{R.randint(10000, 99999)}"])


PII = {
    "card": ("card", card), "cvv": ("cvv", cvv), "cvv4": ("cvv", lambda: cvv(True)),
    "ssn": ("ssn", ssn), "ssn_bare": ("ssn", lambda: ssn("")),
    "phone": ("phone", phone), "phone_bare": ("phone", phone_bare), "phone_intl": ("phone", phone_intl),
    "email": ("email", email), "email_spoken": ("email", email_spoken),
    "ipv4": ("ip", ipv4), "ipv6": ("ip", ipv6),
    "name": ("name", full_name), "first": ("name", first), "last": ("name", last),
    "name_lower": ("name", lambda: full_name().lower()),
    "street": ("address", street), "address": ("address", address_full),
    "csz": ("address", city_state_zip), "zip": ("address", zip5), "pobox": ("address", po_box),
}
DECOYS = {
    "order": order, "tracking": tracking, "amount": amount, "date": date, "time": time,
    "account": account, "reference": reference, "ticket": ticket, "confirmation": confirmation,
    "percent": percent, "version": version, "quantity": quantity, "routing": routing,
    "luhn_fail": luhn_fail, "ssn_invalid": ssn_invalid, "mac": mac, "sku": sku,
}

# ---------------------------------------------------------------------------- templates
# {slot} is filled from PII (labelled) or DECOYS (labelled as decoys); {title} is a title
# outside any span; {company} and {agent_first} are filler that is never PII-bearing in
# the sense of the corpus (company names) — agent first names are labelled as names.

COMPANIES = ["Acme Bank", "Northwind Wireless", "Contoso Insurance", "Fabrikam Energy",
             "Globex Credit Union", "Acme Pharmacy"]

TEMPLATES = [
    # cards and codes
    "My card number is {card}.",
    "Sure, the card is {card}, expiring {date}.",
    "It's a Visa, {card}, and the CVV is {cvv}.",
    "Card number {card} expiration 09/27 security code {cvv}.",
    "Okay so it's {card} and the three digit code on the back is {cvv}.",
    "The Amex is {card}, four digit code {cvv4}.",
    "Can you read me the long number on the front? Yes, {card}.",
    "I'd like to pay {amount} with my debit card {card}.",
    "Charge {amount} to {card} please, cvv {cvv}.",
    "The new card ending in 4242 replaces {card}.",
    "I was charged {amount} twice on {card} on {date}.",
    "The card is {card} and the CVC is {cvv}, zip code {zip}.",
    "Please refund {amount} back to the card {card}.",
    "{card} is the card on file, right?",
    "card no. {card} exp 11/26",
    "The card, uh, {card}, sorry, and the security code is {cvv}.",
    # SSNs
    "My social security number is {ssn}.",
    "SSN {ssn}, date of birth {date}.",
    "For verification I need your social; it's {ssn}.",
    "My social is {ssn_bare}.",
    "The SSN on the application is {ssn_bare}, submitted {date}.",
    "Last four of your social? The full number is {ssn}.",
    "Taxpayer ID {ssn} for the account {account}.",
    # phones
    "You can reach me at {phone}.",
    "My cell is {phone} and my work number is {phone}.",
    "Call me back at {phone} after {time}.",
    "Please call {phone} or email {email}.",
    "The best number to reach me is {phone_bare}.",
    "My phone number is {phone_bare}.",
    "Text me at {phone_bare} when it ships.",
    "I'm calling from {phone_intl}, I'm abroad.",
    "Her mobile is {phone_intl}.",
    "Our office line is {phone}, extension 12.",
    "Yeah {phone}.",
    "Could you call my husband on {phone}? His name is {name}.",
    # emails
    "My email is {email}.",
    "Send the receipt to {email} please.",
    "It's {email_spoken}.",
    "You can email {email} or {email}.",
    "I never got the confirmation at {email}; the code was {confirmation}.",
    # IPs
    "The router's address is {ipv4}.",
    "I logged in from {ipv4} at {time}.",
    "The device at {ipv6} keeps dropping calls.",
    "Firewall logs show {ipv4} and {ipv6} on {date}.",
    "My IP is {ipv4}, firmware {version}.",
    # names
    "Hi, my name is {name}.",
    "This is {name} from {company}, how can I help?",
    "Am I speaking with {title} {last}?",
    "The name on the card is {name}.",
    "Thanks, {first}, I appreciate it.",
    "I spoke with {first} yesterday about order {order}.",
    "Can I speak to {name} please?",
    "{name} called about the refund of {amount}.",
    "Please transfer me to {title} {last} in billing.",
    "Account holder is {name}, account number {account}.",
    "Hello, I'm {first} {last} and I have a question about my bill.",
    "my name is {name_lower} and i need help",
    "Yes, {name} here, returning your call.",
    "The package was signed for by {name} on {date}.",
    # addresses
    "I live at {address}.",
    "Ship it to {street}, please.",
    "My address is {address}.",
    "The billing zip is {zip}.",
    "Send it to {pobox}, {csz}.",
    "We moved to {street} last {date}.",
    "It should go to {address} by {date}.",
    "The service address is {street} and my zip code is {zip}.",
    "Mail the form to {pobox}.",
    "I'm in {csz} now.",
    # mixed
    "Hi, this is {name}, my card {card} was declined and my number is {phone}.",
    "I'm {first} {last}, SSN {ssn}, at {address}.",
    "Update my email to {email} and my phone to {phone}.",
    "Name {name}, DOB {date}, SSN {ssn}, phone {phone}.",
    "Caller {name} at {phone} disputes {amount} on card {card}.",
    "Agent: can I get your zip code? Caller: {zip}.",
    "The order {order} ships to {address}.",
    # hard: a card split by words, numbers back to back
    "Let me read it, {card_split}.",
    "Call {phone} or {phone}, either one.",
    # look-alikes only (no PII)
    "Your order number is {order} and it ships on {date}.",
    "The tracking number is {tracking}.",
    "Tracking {tracking} shows delivered at {time}.",
    "Your total comes to {amount}, due on {date}.",
    "I have a balance of {amount} on account {account}.",
    "The reference number is {reference}.",
    "Your ticket number is {ticket}; we'll update you by {date}.",
    "Confirmation code {confirmation} for {quantity}.",
    "We can offer {percent} off for {quantity}.",
    "The app is on {version} and the phone on {version}.",
    "Your account number is {account}.",
    "The routing number is {routing} and the account is {account}.",
    "Gift card number {luhn_fail}, balance {amount}.",
    "Order {order} was {amount}, delivered {date} at {time}.",
    "I've been a member since {date} and use about {quantity} a month.",
    "Case {ticket} was opened {date} at {time}.",
    "Invoice {reference} for {amount} is {percent} overdue.",
    "The promo code is {confirmation}.",
    "The modem's MAC is {mac} and it runs {version}.",
    "Item SKU {sku}, quantity {quantity}.",
    "Your member ID is {account} and your claim number is {ticket}.",
    "The call lasted {time} and cost {amount}.",
    "The order number is {luhn_fail}.",
    "Reference {ssn_invalid} was rejected.",
    "Policy number {account} renews on {date}.",
    "Your balance is {amount}, which is {percent} of the limit.",
    "Package {tracking} left the facility on {date}.",
    "The transaction ID is {sku} for {amount}.",
    "It's {time} now, the appointment is on {date}.",
    "We shipped {quantity} under order {order}.",
]


def card_split():
    num = card().replace(" ", "").replace("-", "")
    cut = R.choice([4, 8])
    return num[:cut], num[cut:]


def render(template):
    text, pii, decoys = "", [], []

    def add(s, kind=None, decoy=None):
        nonlocal text
        start = len(text.encode())
        text += s
        end = len(text.encode())
        if kind:
            pii.append({"kind": kind, "start": start, "end": end})
        if decoy:
            decoys.append({"kind": decoy, "start": start, "end": end})

    i = 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            add(template[i:])
            break
        add(template[i:j])
        k = template.index("}", j)
        slot = template[j + 1:k]
        i = k + 1
        if slot in PII:
            kind, gen = PII[slot]
            add(gen(), kind=kind)
        elif slot in DECOYS:
            add(DECOYS[slot](), decoy=slot)
        elif slot == "title":
            add(R.choice(TITLES))
        elif slot == "company":
            add(R.choice(COMPANIES))
        elif slot == "card_split":
            a, b = card_split()
            start = len(text.encode())
            add(a + R.choice([", um, ", " hold on ", "... "]) + b)
            pii.append({"kind": "card", "start": start, "end": len(text.encode())})
        else:
            raise KeyError(slot)
    if R.random() < 0.25:
        # Speaker prefixes as in diarised transcripts.
        prefix = R.choice(["Caller: ", "Agent: ", "CUSTOMER: ", "[00:0%d:1%d] " % (R.randint(1, 9), R.randint(0, 9))])
        n = len(prefix.encode())
        text = prefix + text
        for s in pii + decoys:
            s["start"] += n
            s["end"] += n
    return {"text": text, "pii": pii, "decoys": decoys}


def main():
    out = sys.stdout
    for n in range(N_SENTENCES):
        t = TEMPLATES[n % len(TEMPLATES)] if n < len(TEMPLATES) else R.choice(TEMPLATES)
        out.write(json.dumps(render(t), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
