"""The words of a question that can find its page: lower-cased, one- and stop-words dropped.

The library's full-text search ORs them to find candidate pages (storage/library.py); reading
on the spot uses them to find the part of a long page the question is about
(engine/recall/spot_reading.py). Both must agree on what a content word is, so it is said once here.
"""

from __future__ import annotations

import re

STOPWORDS = frozenset("""a about an and are as at be by can could did do does for from had has have how i if in
into is it its me my of on or our should so than that the their them then there these they this to was we were
what when where which who whom why will with would you your""".split())


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS and len(w) > 1]
