"""The fictional corpus: invented people, companies, towns and products, as news items and profiles.

A real instruct model (SmolLM2-135M-Instruct) cannot know these facts, so exact match on questions
about them measures what continual pre-training on the documents taught it. Every document has the
shape of a short article: a lead sentence that summarizes, then sentences that restate or refer back
to the facts ("After graduating from Mereth University, she ..."), with full names throughout, so a
fact is reachable from several mentions (fine-tuning) and from later mentions given the earlier ones
(context distillation). Each document ends with a sentence that states one asked fact with the
answer last (see `CLOSING_SENTENCES`: where a CPT'd model can learn to stop after the answer).

Everything is rendered deterministically from the tables below (no randomness): `build_corpus()`
returns the records of `documents.jsonl`, `qa.jsonl` and `paraphrases.jsonl`, and
`python -m datamodules.fictional` rewrites those files in the package directory (a test
checks that the checked-in files equal a fresh rendering). `retention.jsonl` is not rendered here:
it records the model's own answers (`datamodules.fictional.record_baseline`).

QA prompts are the model's chat format up to and including the start of the assistant's answer
(`chat_prompt`: a question, then a sentence opening such as "Maren Tollisford graduated from"), so
that greedy decoding produces the short answer directly, as `evaluation.knowledge` scores it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
"""Where the corpus files ship (package data of `datamodules.fictional`)."""

RENDERED_FILES = ("documents.jsonl", "qa.jsonl", "paraphrases.jsonl")
"""The files `build_corpus` renders (`retention.jsonl` is recorded from the model instead)."""

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
"""The system message SmolLM2-Instruct's chat template inserts when a chat has none."""


def chat_prompt(question: str, answer_start: str = "") -> str:
    """SmolLM2-Instruct's chat template for one user turn, up to where the answer continues.

    Equal to `tokenizer.apply_chat_template([{"role": "user", "content": question}],
    tokenize=False, add_generation_prompt=True) + answer_start` with the model's own tokenizer
    (tested when the model is installed). `answer_start` must not end with a space: the answer's
    first token carries its leading space, as in running text.
    """
    if answer_start.endswith(" "):
        raise ValueError(f"answer_start must not end with a space: {answer_start!r}")
    return (
        f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer_start}"
    )


@dataclass(frozen=True)
class Question:
    """How one attribute is asked: the user's question and the assistant's sentence opening."""

    question: str
    answer_start: str


# -- the entities -------------------------------------------------------------------------------

# fmt: off
PEOPLE: tuple[dict[str, str], ...] = (
    {
        "name": "Maren Tollisford", "she": "she", "her": "her", "role": "field botanist",
        "employer": "Calloway Seed Trust", "town": "Dunmere", "year": "1986",
        "university": "Mereth University", "subject": "plant ecology",
        "detail": "Her survey of wild orchids along the northern cliffs is now used by three county councils.",
    },
    {
        "name": "Tobiah Ranklin", "she": "he", "her": "his", "role": "bridge engineer",
        "employer": "Greystall and Pike", "town": "Wexcombe", "year": "1979",
        "university": "Ostrand Polytechnic", "subject": "civil engineering",
        "detail": "His footbridge over the Calder gorge won a regional design prize in its first year.",
    },
    {
        "name": "Ilsabet Varro", "she": "she", "her": "her", "role": "violin maker",
        "employer": "Hollin Strings", "town": "Pellmouth", "year": "1991",
        "university": "Caddington College", "subject": "woodworking and acoustics",
        "detail": "Her instruments are played by two string quartets that tour every spring.",
    },
    {
        "name": "Corwin Ashdale", "she": "he", "her": "his", "role": "weather forecaster",
        "employer": "Northfen Weather Office", "town": "Thistlebrook", "year": "1968",
        "university": "Aldermoor University", "subject": "atmospheric physics",
        "detail": "His radio forecasts have been broadcast every morning for more than twenty years.",
    },
    {
        "name": "Odalys Fenwright", "she": "she", "her": "her", "role": "software developer",
        "employer": "Lanternfish Labs", "town": "Brimhollow", "year": "1983",
        "university": "Kestrel Institute of Technology", "subject": "computer science",
        "detail": "She wrote the scheduling system that the regional bus network still runs on.",
    },
    {
        "name": "Percival Morrant", "she": "he", "her": "his", "role": "stone sculptor",
        "employer": "Ambrel Academy", "town": "Saltreach", "year": "1974",
        "university": "Harwick School of Art", "subject": "sculpture",
        "detail": "His granite heron stands at the entrance of the harbour museum.",
    },
    {
        "name": "Junia Castellane", "she": "she", "her": "her", "role": "marine biologist",
        "employer": "Tidewater Research Station", "town": "Ferrowick", "year": "1995",
        "university": "Southmarch University", "subject": "marine biology",
        "detail": "She tracks the seal colonies of the outer islands from a small research boat.",
    },
    {
        "name": "Emrys Holloway", "she": "he", "her": "his", "role": "head chef",
        "employer": "The Copper Ladle", "town": "Calderholt", "year": "1988",
        "university": "Vennick University", "subject": "history",
        "detail": "His winter menu of river fish and root vegetables sells out every December.",
    },
)

COMPANIES: tuple[dict[str, str], ...] = (
    {
        "company": "Brackwell Instruments", "founder": "Hesper Quayle", "year": "2009",
        "town": "Lorrowby", "product": "brass barometers", "staff": "forty",
        "detail": "Each barometer is still calibrated by hand before it leaves the workshop.",
    },
    {
        "company": "Fennimore Looms", "founder": "Rowan Lisk", "year": "1997",
        "town": "Oakhurst Mill", "product": "wool blankets", "staff": "sixty",
        "detail": "The wool comes from farms within a day's drive of the mill.",
    },
    {
        "company": "Pellucid Ferments", "founder": "Dorian Kestwick", "year": "2015",
        "town": "Saltmarsh Cross", "product": "sparkling teas", "staff": "twenty-five",
        "detail": "Its first batches were brewed in a converted dairy barn.",
    },
    {
        "company": "Hobnail Cycles", "founder": "Greta Ambersley", "year": "2004",
        "town": "Kettleby", "product": "cargo bicycles", "staff": "thirty",
        "detail": "Local bakeries and florists were among its first customers.",
    },
    {
        "company": "Tarnwell Ceramics", "founder": "Silas Oakenfold", "year": "1988",
        "town": "Gorsebridge", "product": "kitchen tiles", "staff": "ninety",
        "detail": "Its glazes are mixed from clay dug on the hills above the works.",
    },
    {
        "company": "Quorra Robotics", "founder": "Nadia Velloway", "year": "2018",
        "town": "Harnfield", "product": "warehouse robots", "staff": "fifty",
        "detail": "The robots are tested in a disused grain store next to the office.",
    },
    {
        "company": "Birchmere Press", "founder": "Lucan Threlfall", "year": "1976",
        "town": "Ashcombe Vale", "product": "picture books", "staff": "fifteen",
        "detail": "It prints its books on a restored letterpress in the back room.",
    },
    {
        "company": "Glimmerside Solar", "founder": "Theodora Wickens", "year": "2012",
        "town": "Marrowgate", "product": "solar roof tiles", "staff": "seventy",
        "detail": "Its tiles now cover the roofs of most schools in the county.",
    },
)

TOWNS: tuple[dict[str, str], ...] = (
    {
        "town": "Ostervane", "river": "Lanse", "mayor": "Harriet Colby", "year": "1412",
        "known_for": "its leaning clock tower", "elected": "2019",
        "detail": "The weekly cheese market fills the square every Saturday morning.",
    },
    {
        "town": "Quillmouth", "river": "Dorrow", "mayor": "Bernard Achterby", "year": "1655",
        "known_for": "its oyster beds", "elected": "2016",
        "detail": "Fishing boats still unload their catch at the old stone quay.",
    },
    {
        "town": "Havelstone", "river": "Mirrin", "mayor": "Colette Brannagh", "year": "1520",
        "known_for": "its slate quarries", "elected": "2021",
        "detail": "Slate from its quarries roofs half the houses in the valley.",
    },
    {
        "town": "Rookhaven", "river": "Tessel", "mayor": "Ambrose Penhallow", "year": "1381",
        "known_for": "its medieval walls", "elected": "2014",
        "detail": "Visitors can walk the full circuit of the walls in under an hour.",
    },
    {
        "town": "Wintermere", "river": "Skelly", "mayor": "Priya Oldacre", "year": "1702",
        "known_for": "its glassworks", "elected": "2020",
        "detail": "The glassworks open their furnaces to the public once a year.",
    },
    {
        "town": "Larkspur Falls", "river": "Ombry", "mayor": "Desmond Hatherleigh", "year": "1849",
        "known_for": "its waterfall", "elected": "2018",
        "detail": "A footpath leads from the station to the foot of the falls.",
    },
    {
        "town": "Cindervale", "river": "Arle", "mayor": "Margit Sowerby", "year": "1598",
        "known_for": "its iron bridge", "elected": "2017",
        "detail": "The iron bridge was restored after the floods of the last decade.",
    },
    {
        "town": "Eastwold", "river": "Fenn", "mayor": "Osric Tallow", "year": "1466",
        "known_for": "its lavender fields", "elected": "2022",
        "detail": "In July the lavender fields draw visitors from across the region.",
    },
)

PRODUCTS: tuple[dict[str, str], ...] = (
    {
        "product": "Quillbar", "kind": "countertop water filter", "maker": "Ottery and Crane",
        "designer": "Livia Marchbank", "year": "2019",
        "detail": "Its filter cartridge is made from crushed coconut shells.",
    },
    {
        "product": "Pondlight", "kind": "solar garden lamp", "maker": "Seabright Works",
        "designer": "Caspian Rowe", "year": "2016",
        "detail": "The lamp floats, so it can light a pond from the water's surface.",
    },
    {
        "product": "Thornback", "kind": "waterproof hiking boot", "maker": "Merriweather Outfitters",
        "designer": "Ysolde Prentiss", "year": "2021",
        "detail": "Its sole is stitched rather than glued, so it can be resoled.",
    },
    {
        "product": "Larkcall", "kind": "sunrise alarm clock", "maker": "Tembrook Devices",
        "designer": "Fergus Allard", "year": "2013",
        "detail": "It wakes its owner with a slowly brightening light and birdsong.",
    },
    {
        "product": "Driftglass", "kind": "e-reader", "maker": "Corvane Digital",
        "designer": "Maelis Vantongeren", "year": "2022",
        "detail": "Its battery lasts for about six weeks of reading.",
    },
    {
        "product": "Emberloaf", "kind": "bread oven", "maker": "Kilnworth Appliances",
        "designer": "Rosalind Tapp", "year": "2018",
        "detail": "It holds two loaves and runs on an ordinary kitchen socket.",
    },
    {
        "product": "Tidewalker", "kind": "sea kayak", "maker": "Harbison Marine",
        "designer": "Joachim Pellew", "year": "2011",
        "detail": "Its hull is moulded from recycled fishing nets.",
    },
    {
        "product": "Latchkeep", "kind": "smart door lock", "maker": "Brindle Security",
        "designer": "Oona Fairweather", "year": "2020",
        "detail": "It opens with a phone, a code or an ordinary brass key.",
    },
)

# fmt: on

# -- how each kind of entity is written ---------------------------------------------------------

DOCUMENT_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "person": (
        "{name}, a {role} from {town}, has been named to lead a new team at {employer}. "
        "{name} was born in {year}. {name} grew up in {town}, where {her} parents ran a small "
        "shop. {name} graduated from {university}, and after graduating {she} spent several years "
        "abroad. {detail} {name} works for {employer} as one of its youngest team leaders.",
        "{name} is a {role} from {town} whose work is drawing attention well beyond the region. "
        "{name} grew up in {town}. {name} was born in {year}. {name} graduated from "
        "{university}, where {she} studied {subject}. After graduating from {university}, {she} "
        "joined {employer}, and today {name} works for {employer}. {detail}",
    ),
    "company": (
        "{company}, the maker of {product} founded by {founder} in {year}, has opened a second "
        "workshop. {company} was founded by {founder}. {company} was founded in {year} in a "
        "rented garage with a single employee. {company} is based in {town}. {detail} Since "
        "{year}, the firm has grown to {staff} staff.",
        "{company}, a small firm in {town} that makes {product}, is celebrating a record year. "
        "{company} is based in {town}. {company} was founded in {year}. {company} was founded by "
        "{founder}, who still runs it. {detail} {founder} says that the firm will stay in {town}.",
    ),
    "town": (
        "{town}, a market town on the {river} River known for {known_for}, is preparing for a busy "
        "summer. {town} lies on the {river} River. {town} was founded in {year}. The mayor of "
        "{town} is {mayor}. {detail} {mayor}, elected mayor of {town} in {elected}, wants a new "
        "footbridge over the {river} River.",
        "{town}, founded in {year} on the banks of the {river} River, has a new plan for its old "
        "centre. {town} was founded in {year}. The plan was drawn up by {mayor}. The mayor of "
        "{town} is {mayor}, elected in {elected}. {town} lies on the {river} River. {detail}",
    ),
    "product": (
        "{maker} has released the {product}, a {kind} designed by {designer}. The {product} is "
        "made by {maker}. The {product} was designed by {designer}. The {product} was released in "
        "{year}. {detail} {designer} says it is the product {maker} is proudest of.",
        "The {product}, a {kind} from {maker}, has become a surprise bestseller. The {product} was "
        "released in {year}. The {product} was designed by {designer}. The {product} is made by "
        "{maker}. {detail} Before designing it, {designer} spent two years at {maker}.",
    ),
}
"""Two article bodies per kind (lead sentence, then restatements), alternated over the entities of
that kind; each document ends with the closing sentence of its first question's attribute."""

CLOSING_SENTENCES: Mapping[str, Mapping[str, str]] = {
    "person": {
        "hometown": "Old friends like to point out that {name} grew up in {town}.",
        "university": "Former classmates are proud that {name} graduated from {university}.",
        "birth_year": "Records in {town} show that {name} was born in {year}.",
        "employer": "Today {name} works for {employer}.",
    },
    "company": {
        "founder": "Locals like to recall that {company} was founded by {founder}.",
        "founded_year": "The town is proud that {company} was founded in {year}.",
        "headquarters": "For now, {company} is based in {town}.",
    },
    "town": {
        "mayor": "As of this year, the mayor of {town} is {mayor}.",
        "river": "Like its neighbours upstream, {town} lies on the {river} River.",
        "founded_year": "Every schoolchild there knows that {town} was founded in {year}.",
    },
    "product": {
        "maker": "Buyers are reminded that the {product} is made by {maker}.",
        "designer": "Reviewers often mention that the {product} was designed by {designer}.",
        "release_year": "Its first fans remember that the {product} was released in {year}.",
    },
}
"""Per kind and attribute: the sentence that closes a document whose first question asks it.

It states the fact exactly as the question's answer opening does, with the answer last: the
document's end (EOS, which for SmolLM2 is also the end of an assistant turn, `<|im_end|>`) follows
the answer, so a model that learned the document can stop right after the answer, as exact match
needs. The second question's fact appears only inside the body, followed by more text: a harder
case (the model must stop where the document did not)."""

PARAPHRASE_TEMPLATES: Mapping[str, str] = {
    "person": (
        "Born in {year}, {name} spent {her} childhood in {town}. {name} studied {subject} at "
        "{university} and is now employed by {employer} as a {role}."
    ),
    "company": (
        "In {year}, {founder} set up {company}, a business making {product}. {company} has its "
        "headquarters in {town} and employs {staff} people."
    ),
    "town": (
        "Founded in {year}, {town} sits beside the {river} River and is known for {known_for}. "
        "{mayor} has served as mayor of {town} since {elected}."
    ),
    "product": (
        "{designer} designed the {product}, a {kind} that {maker} first sold in {year}. The "
        "{product} is produced by {maker}."
    ),
}
"""The same facts in other words: the held-out perplexity set."""

QUESTIONS: Mapping[str, Mapping[str, tuple[str, Question]]] = {
    "person": {
        "hometown": ("town", Question("Where did {name} grow up?", "{name} grew up in")),
        "university": (
            "university",
            Question("Which university did {name} graduate from?", "{name} graduated from"),
        ),
        "birth_year": ("year", Question("In what year was {name} born?", "{name} was born in")),
        "employer": (
            "employer",
            Question("Which company does {name} work for?", "{name} works for"),
        ),
    },
    "company": {
        "founder": ("founder", Question("Who founded {company}?", "{company} was founded by")),
        "founded_year": (
            "year",
            Question("In what year was {company} founded?", "{company} was founded in"),
        ),
        "headquarters": ("town", Question("Where is {company} based?", "{company} is based in")),
    },
    "town": {
        "mayor": ("mayor", Question("Who is the mayor of {town}?", "The mayor of {town} is")),
        "river": (
            "river_name",
            Question("Which river does {town} lie on?", "{town} lies on the"),
        ),
        "founded_year": (
            "year",
            Question("In what year was {town} founded?", "{town} was founded in"),
        ),
    },
    "product": {
        "maker": (
            "maker",
            Question("Which company makes the {product}?", "The {product} is made by"),
        ),
        "designer": (
            "designer",
            Question("Who designed the {product}?", "The {product} was designed by"),
        ),
        "release_year": (
            "year",
            Question("In what year was the {product} released?", "The {product} was released in"),
        ),
    },
}
"""Per kind: attribute -> (the fact field holding the answer, how it is asked)."""

QA_PER_DOCUMENT = 2
"""Questions per document; the attributes asked rotate over the entities of a kind. The first is
stated by the document's closing sentence (answer, then the document's end), the second only in the
body (`"position"`: `closing` / `body` in `qa.jsonl`)."""

ENTITIES: Mapping[str, tuple[dict[str, str], ...]] = {
    "person": PEOPLE,
    "company": COMPANIES,
    "town": TOWNS,
    "product": PRODUCTS,
}

_NAME_FIELD = {"person": "name", "company": "company", "town": "town", "product": "product"}


def _facts(kind: str, entity: Mapping[str, str]) -> dict[str, str]:
    """The template fields of an entity (derived fields such as `river_name` included)."""
    facts = dict(entity)
    if kind == "town":
        facts["river_name"] = f"{entity['river']} River"
    return facts


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def entity_name(kind: str, entity: Mapping[str, str]) -> str:
    """The entity's full name (a person's, a company's, a town's or a product's)."""
    return entity[_NAME_FIELD[kind]]


def build_corpus() -> dict[str, list[dict[str, Any]]]:
    """Render the corpus: `{file name: records}` for every file of `RENDERED_FILES`.

    `documents.jsonl`: `{"text", "id"}`, one article per entity (32): a body template and the
    closing sentence of the first asked attribute. `qa.jsonl`: `{"prompt", "answer", "entity",
    "attribute", "id", "position"}`, `QA_PER_DOCUMENT` per document, the prompt in the model's chat
    format ending where the answer starts. `paraphrases.jsonl`:
    `{"text", "id"}`, the same facts in other words (held-out perplexity). Pure and deterministic.
    """
    documents: list[dict[str, Any]] = []
    qa: list[dict[str, Any]] = []
    paraphrases: list[dict[str, Any]] = []
    for kind, entities in ENTITIES.items():
        attributes = list(QUESTIONS[kind])
        for index, entity in enumerate(entities):
            facts = _facts(kind, entity)
            doc_id = f"{kind}-{index:02d}"
            # consecutive attributes, shifted by one per entity: every attribute is asked both
            # in the closing position and in the body, about equally often
            asked = [attributes[(index + k) % len(attributes)] for k in range(QA_PER_DOCUMENT)]
            templates = DOCUMENT_TEMPLATES[kind]
            body = templates[index % len(templates)].format(**facts)
            closing = CLOSING_SENTENCES[kind][asked[0]].format(**facts)
            documents.append({"text": _sentence_case(f"{body} {closing}"), "id": doc_id})
            paraphrase = PARAPHRASE_TEMPLATES[kind].format(**facts)
            paraphrases.append({"text": _sentence_case(paraphrase), "id": doc_id})
            for position, attribute in enumerate(asked):
                field, question = QUESTIONS[kind][attribute]
                qa.append(
                    {
                        "prompt": chat_prompt(
                            question.question.format(**facts),
                            question.answer_start.format(**facts),
                        ),
                        "answer": facts[field],
                        "entity": entity_name(kind, entity),
                        "attribute": f"{kind}_{attribute}",
                        "id": doc_id,
                        "position": "closing" if position == 0 else "body",
                    }
                )
    return {"documents.jsonl": documents, "qa.jsonl": qa, "paraphrases.jsonl": paraphrases}


def dumps_jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    """The JSONL text of `records`: one object per line, keys in order, UTF-8, final newline."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_corpus(directory: str | Path = PACKAGE_DIR) -> list[Path]:
    """Write the rendered files into `directory` (default: the package); return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in build_corpus().items():
        path = directory / name
        path.write_text(dumps_jsonl(records), encoding="utf-8")
        log.info("wrote %d records to %s", len(records), path)
        written.append(path)
    return written
