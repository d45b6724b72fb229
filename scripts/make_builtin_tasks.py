"""Regenerate sedac/data/builtin_tasks.jsonl: team-written task templates x topics.

The 70 hand-written prompts in builtin_prompts.jsonl are too few to certify small epsilons (a
Learn-then-Test certificate needs about ln(1/delta)/epsilon calibration sequences even at zero
risk). This second built-in set (dataset name ``builtin-tasks``) gives 660 distinct requests from
a fixed template distribution (6 templates x 110 topics); the quickstart trains the probe on
``builtin`` and calibrates on ``builtin-tasks``, so the certificate is about that distribution of
requests.

Rows 0-239 are the first release's 240 (40 topics, the same order); rows 240-659 add 70 topics
(``MORE_TOPICS``, shuffled among themselves), so a ``--limit N`` prefix of at most 240 rows is
unchanged. The second block exists because a certificate's margin shrinks about like
ln(1/delta)/n: soft skip at 15 % of the MLP bytes needed more calibration units than 240
(docs/soft.md, "How many sequences").
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
MORE_TOPICS = [
    "glaciers", "the Renaissance", "hurricanes", "octopuses", "the metric system",
    "composting", "the periodic table", "jazz music", "coral reefs", "the first airplanes",
    "antibiotics", "budgeting", "the Silk Road", "wind turbines", "deserts",
    "photography", "the human brain", "recycling plastic", "the Amazon river", "dinosaurs",
    "rainbows", "3D printing", "the Industrial Revolution", "mushrooms", "satellites",
    "the ancient Egyptians", "magnets", "origami", "the Arctic", "volunteering",
    "nuclear power", "the violin", "desalination", "ant colonies", "the Milky Way",
    "cryptography", "gardening in small spaces", "the Mayan civilization", "bridges", "tea",
    "typhoons and monsoons", "the telescope", "first aid", "sharks", "the Panama Canal",
    "batteries", "the Vikings", "yoga", "lightning", "maps and map projections",
    "bread baking", "the Mars rovers", "wolves", "public transport", "the human skeleton",
    "paper making", "the Pythagorean theorem", "fossils", "urban heat islands", "penguins",
    "blockchain", "the Great Barrier Reef", "semiconductors", "kites", "the Hubble telescope",
    "bamboo", "elections", "the speed of light", "tsunamis", "language learning apps",
]
TEMPLATES = [
    ("explain", "Explain {t} to a ten-year-old in a few sentences."),
    ("facts", "List three interesting facts about {t}."),
    ("summary", "Write a short paragraph summarizing what {t} is and why it matters."),
    ("qa", "What is the most common misconception about {t}?"),
    ("creative", "Write a four-line poem about {t}."),
    ("howto", "Give me two tips for learning more about {t}."),
]


def build_rows() -> list[dict]:
    """The file's rows, in order."""
    assert not set(TOPICS) & set(MORE_TOPICS)
    rows = []
    for seed, topics in ((0, TOPICS), (1, MORE_TOPICS)):
        block = [{"category": cat, "prompt": tpl.format(t=t)} for t in topics for cat, tpl in TEMPLATES]
        # fixed shuffle so that any prefix (--limit N) mixes topics and task kinds
        random.Random(seed).shuffle(block)
        rows += block
    return [{"id": i, **r} for i, r in enumerate(rows)]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "sedac" / "data" / "builtin_tasks.jsonl"
    rows = build_rows()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
