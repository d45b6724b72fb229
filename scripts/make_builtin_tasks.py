"""Regenerate sedac/data/builtin_tasks.jsonl: team-written task templates x topics.

The 70 hand-written prompts in builtin_prompts.jsonl are too few to certify small epsilons (a
Learn-then-Test certificate needs about ln(1/delta)/epsilon calibration sequences even at zero
risk). This second built-in set (dataset name ``builtin-tasks``) gives 240 distinct requests from
a fixed template distribution; the quickstart trains the probe on ``builtin`` and calibrates on
``builtin-tasks``, so the certificate is about that distribution of requests.
"""

import json
import random
from pathlib import Path

TOPICS = [
    "photosynthesis", "the water cycle", "compound interest", "the French Revolution", "black holes",
    "vaccines", "recursion in programming", "climate change", "the stock market", "volcanoes",
    "machine learning", "the human heart", "electric cars", "the Roman Empire", "plate tectonics",
    "sleep", "inflation", "the internet", "honey bees", "solar panels",
    "the Moon landing", "coffee", "chess openings", "the immune system", "earthquakes",
    "public libraries", "electricity", "the Great Wall of China", "rainforests", "bicycles",
    "prime numbers", "the printing press", "ocean tides", "healthy breakfast", "password security",
    "renewable energy", "the Olympic Games", "DNA", "migration of birds", "time zones",
]
TEMPLATES = [
    ("explain", "Explain {t} to a ten-year-old in a few sentences."),
    ("facts", "List three interesting facts about {t}."),
    ("summary", "Write a short paragraph summarizing what {t} is and why it matters."),
    ("qa", "What is the most common misconception about {t}?"),
    ("creative", "Write a four-line poem about {t}."),
    ("howto", "Give me two tips for learning more about {t}."),
]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "sedac" / "data" / "builtin_tasks.jsonl"
    rows = []
    for ti, t in enumerate(TOPICS):
        for ki, (cat, tpl) in enumerate(TEMPLATES):
            rows.append({"id": len(rows), "category": cat, "prompt": tpl.format(t=t)})
    # fixed shuffle so that any prefix (--limit N) mixes topics and task kinds
    random.Random(0).shuffle(rows)
    for i, r in enumerate(rows):
        r["id"] = i
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
