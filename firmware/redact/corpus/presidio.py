#!/usr/bin/env python3
"""Presidio's rule recognizers on the corpus: the anchor of `scripts/bench privacy`.

Reads the corpus (JSON lines with "text") on stdin; writes, one line per sentence, the spans
Presidio's AnalyzerEngine finds as JSON `[[kind, start, end], ...]` with byte offsets (UTF-8)
and callgate's kind names. Scoring is callgate_redact::corpus::score, in the bench.

No spaCy model is downloaded: the NLP engine is a blank English spaCy pipeline (tokenizer
only), so the NER recognizer finds nothing and what runs are Presidio's pattern and
checksum recognizers (credit card with Luhn, US SSN, phone numbers via `phonenumbers`,
email, IP, ...), the "rule recognizers" of issue 17. Only the entities that match a kind
of callgate's are asked for.
"""
import json
import sys

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import SpacyNlpEngine

KINDS = {
    "CREDIT_CARD": "card",
    "US_SSN": "ssn",
    "PHONE_NUMBER": "phone",
    "EMAIL_ADDRESS": "email",
    "IP_ADDRESS": "ip",
    "PERSON": "name",
    "LOCATION": "address",
}


class BlankEngine(SpacyNlpEngine):
    """A spaCy engine on `spacy.blank("en")`: no model to download."""

    def load(self):
        self.nlp = {"en": spacy.blank("en")}


def offline_tlds():
    """The email recognizer checks domains with `tldextract.extract`, which fetches the
    public suffix list from the network first; use the snapshot it ships instead."""
    extractor = tldextract.TLDExtract(suffix_list_urls=())
    tldextract.extract = extractor
    tldextract.tldextract.extract = extractor


def main():
    offline_tlds()
    engine = BlankEngine(
        models=[{"lang_code": "en", "model_name": "blank"}],
    )
    engine.load()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    entities = list(KINDS)
    for line in sys.stdin:
        if not line.strip():
            continue
        text = json.loads(line)["text"]
        out = []
        for r in analyzer.analyze(text=text, language="en", entities=entities):
            start = len(text[: r.start].encode())
            end = len(text[: r.end].encode())
            out.append([KINDS[r.entity_type], start, end])
        print(json.dumps(out))


if __name__ == "__main__":
    main()
