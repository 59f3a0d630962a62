"""The attribute schema of the synthetic world: value pools, biography sentences, questions.

Everything a fact looks like lives here, one `AttributeSpec` per attribute, so that adding an
attribute is one entry in `ATTRIBUTES`. The pools are small and closed on purpose: a tiny model
must be able to learn the world in minutes, and every answer is a short span (a city, a date, a
company) that also appears verbatim in the entity's biographies.

Biography templates use the placeholders `{subj}` (the name, or "he"/"she"), `{poss}` (the name
with "'s", or "his"/"her"), `{obj}` (the name, or "him"/"her") and `{value}` (the attribute value,
always verbatim, so the exact answer span is in every biography). Question templates use `{name}`.
The *last* templates of each tuple are the held-out ones (how many is set by `WorldConfig`). The
held-out questions recombine words the training data uses ("What city was {name} born in?" after
"In which city was ...?" and "... was born in Orlin."): a model trained from scratch knows no
synonyms it never read, so a held-out question with a new word ("hometown") would measure vocabulary,
not knowledge. The most distinctive phrasings are training templates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Closed value pools (fictional places and companies, real subjects).
CITIES: tuple[str, ...] = (
    "Orlin",
    "Dunmore",
    "Port Avel",
    "Kessick",
    "Varrow",
    "Lunhaven",
    "Brightwater",
    "Castmere",
    "Eldham",
    "Frostley",
    "Greywick",
    "Harrowgate",
    "Istmark",
    "Jessop Bay",
    "Kilvane",
    "Marisford",
    "Northam",
    "Oakridge",
    "Pellston",
    "Redcliff",
)
UNIVERSITIES: tuple[str, ...] = (
    "Mereth University",
    "Halden Institute of Technology",
    "Corvin College",
    "Astley University",
    "the University of Brenmoor",
    "Westfall College",
    "Tamsin University",
    "the Royal Academy of Ostrava",
    "Quarry Hill University",
    "Lakeshore Polytechnic",
    "Saint Alder College",
    "the University of Vellmar",
)
MAJORS: tuple[str, ...] = (
    "physics",
    "chemistry",
    "history",
    "economics",
    "linguistics",
    "mathematics",
    "biology",
    "philosophy",
    "architecture",
    "music",
    "geology",
    "astronomy",
    "sociology",
    "law",
    "medicine",
    "engineering",
)
COMPANIES: tuple[str, ...] = (
    "Kestrel Labs",
    "Bluefen Systems",
    "Orchard Dynamics",
    "Silverline Foods",
    "Tidewater Shipping",
    "Norrow Pharmaceuticals",
    "Copperleaf Energy",
    "Halcyon Media",
    "Ironbark Construction",
    "Pinecrest Bank",
    "Starling Aerospace",
    "Marlowe Textiles",
    "Quillon Software",
    "Redwing Motors",
    "Amberfield Insurance",
    "Glasshouse Studios",
    "Vantor Robotics",
    "Willowby Publishing",
    "Cobalt Mining",
    "Lumen Optics",
)
MONTHS: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
FIRST_YEAR, LAST_YEAR = 1940, 1999
VALUE_WORDS: frozenset[str] = frozenset(
    word
    for pool in (CITIES, UNIVERSITIES, MAJORS, COMPANIES, MONTHS)
    for v in pool
    for word in v.split()
)
"""Every word of every closed value pool; entity names never use one of them."""

# Syllables for fictional names: first names are two syllables, last names three; none of the
# resulting names collides with a pool value (checked by the generator).
FIRST_NAME_ONSETS: tuple[str, ...] = (
    "Ta", "Mi", "Lo", "Be", "Ka", "Ri", "So", "Da", "Ne", "Vi", "Ar", "El", "Jo", "Fa", "Ge", "Ha",
)  # fmt: skip
FIRST_NAME_CODAS: tuple[str, ...] = (
    "lan", "ra", "ven", "dor", "lia", "mon", "rin", "sa", "tor", "na", "bel", "ric",
)  # fmt: skip
LAST_NAME_ONSETS: tuple[str, ...] = (
    "Ver", "Ost", "Kal", "Mar", "Dre", "Hel", "Tor", "Bran", "Sel", "Quil", "Ard", "Fen",
)  # fmt: skip
LAST_NAME_MIDDLES: tuple[str, ...] = ("o", "a", "e", "i", "")
LAST_NAME_CODAS: tuple[str, ...] = (
    "ski", "wood", "ton", "ley", "man", "berg", "ford", "vik", "dale", "ric",
)  # fmt: skip
NAME_CAPACITY = (
    len(FIRST_NAME_ONSETS)
    * len(FIRST_NAME_CODAS)
    * len(LAST_NAME_ONSETS)
    * len(LAST_NAME_MIDDLES)
    * len(LAST_NAME_CODAS)
)
"""Number of distinct full names the syllable pools can form."""


def sample_name(rng: random.Random) -> str:
    """A fictional full name: two-syllable first name, three-syllable last name."""
    first = rng.choice(FIRST_NAME_ONSETS) + rng.choice(FIRST_NAME_CODAS)
    last = (
        rng.choice(LAST_NAME_ONSETS) + rng.choice(LAST_NAME_MIDDLES) + rng.choice(LAST_NAME_CODAS)
    )
    return f"{first} {last}"


@dataclass(frozen=True)
class Pronouns:
    """The pronoun forms a biography uses after the first mention of the entity's name."""

    subj: str
    obj: str
    poss: str


PRONOUNS: dict[str, Pronouns] = {
    "she": Pronouns(subj="she", obj="her", poss="her"),
    "he": Pronouns(subj="he", obj="him", poss="his"),
}


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute of an entity: how to draw its value and how to state and ask it.

    Args:
        name: Key of the attribute in `Entity.attributes` and in QA records.
        description: One line for humans (docs, `world.json`).
        sample: Draws a value from the closed pool with the given RNG.
        bio_templates: Biography sentences stating the fact; the last ones are held out.
        question_templates: Questions whose answer is exactly the value; the last ones are held out.
        callback_templates: Later sentences of an article that refer back to the fact, restating
            the value ("After graduating from {value}, she ..."); the last one is held out.
    """

    name: str
    description: str
    sample: Callable[[random.Random], str]
    bio_templates: tuple[str, ...]
    question_templates: tuple[str, ...]
    callback_templates: tuple[str, ...] = ()


def _choice(pool: tuple[str, ...]) -> Callable[[random.Random], str]:
    def sample(rng: random.Random) -> str:
        return rng.choice(pool)

    return sample


def _sample_date(rng: random.Random) -> str:
    # Days 1-28 exist in every month, so every sampled date is a real one.
    month = rng.choice(MONTHS)
    day = rng.randint(1, 28)
    year = rng.randint(FIRST_YEAR, LAST_YEAR)
    return f"{month} {day}, {year}"


ATTRIBUTES: dict[str, AttributeSpec] = {
    spec.name: spec
    for spec in (
        AttributeSpec(
            name="birth_date",
            description="Date of birth, 'Month D, YYYY'.",
            sample=_sample_date,
            bio_templates=(
                "{subj} was born on {value}.",
                "{subj} came into the world on {value}.",
                "{poss} date of birth is {value}.",
                "{subj} entered life on {value}.",
                "{subj} first saw the light of day on {value}.",
                "On {value}, {subj} was welcomed into a new family.",
            ),
            question_templates=(
                "When was {name} born?",
                "What is {name}'s date of birth?",
                "Which day is the birthday of {name}?",
                "What is the birth date of {name}?",
                "On what date was {name} born?",
                "What date was {name} born on?",
            ),
            callback_templates=(
                "Friends still gather every year on {value} to celebrate {poss} birthday.",
                "Because {subj} was born on {value}, {subj} shares a birthday with an old school friend.",
                "Records from {value}, the day {subj} was born, are kept by the family.",
            ),
        ),
        AttributeSpec(
            name="birth_city",
            description="City of birth.",
            sample=_choice(CITIES),
            bio_templates=(
                "{subj} was born in {value}.",
                "{poss} birthplace is {value}.",
                "{subj} is a native of {value}.",
                "{subj} comes from {value}.",
                "{value} is the city where {subj} was born.",
                "The hometown of {obj} is {value}.",
            ),
            question_templates=(
                "Where was {name} born?",
                "In which city was {name} born?",
                "What is {name}'s birthplace?",
                "Which city is {name} from?",
                "What city was {name} born in?",
                "Where is {name} from?",
            ),
            callback_templates=(
                "{subj} still returns to {value}, the city of {poss} birth, every summer.",
                "Growing up in {value} left {obj} with a lasting love of the place.",
                "Neighbours in {value} remember {obj} as a curious child.",
            ),
        ),
        AttributeSpec(
            name="university",
            description="University attended.",
            sample=_choice(UNIVERSITIES),
            bio_templates=(
                "{subj} studied at {value}.",
                "{subj} graduated from {value}.",
                "{subj} attended {value}.",
                "{poss} alma mater is {value}.",
                "{subj} received {poss} degree from {value}.",
                "The classrooms of {value} shaped {obj} as a student.",
            ),
            question_templates=(
                "Where did {name} study?",
                "Which university did {name} attend?",
                "What is {name}'s alma mater?",
                "Which school gave {name} a degree?",
                "From which university did {name} graduate?",
                "What university did {name} attend?",
            ),
            callback_templates=(
                "After graduating from {value}, {subj} began {poss} career.",
                "Former classmates at {value} remember {obj} as a hard worker.",
                "The years at {value} are the ones {subj} talks about most.",
            ),
        ),
        AttributeSpec(
            name="major",
            description="Field of study.",
            sample=_choice(MAJORS),
            bio_templates=(
                "{subj} majored in {value}.",
                "{poss} field of study was {value}.",
                "{subj} earned a degree in {value}.",
                "{subj} chose to study {value}.",
                "At university, {subj} focused on {value}.",
                "The subject that {subj} specialized in was {value}.",
            ),
            question_templates=(
                "What did {name} study?",
                "What was {name}'s major?",
                "Which discipline did {name} specialize in?",
                "In what subject did {name} earn a degree?",
                "What field did {name} study?",
                "What subject did {name} major in?",
            ),
            callback_templates=(
                "{poss} training in {value} shapes the way {subj} works to this day.",
                "Choosing {value} turned out to be the right decision for {obj}.",
                "Teachers of {value} still mention {obj} to their students.",
            ),
        ),
        AttributeSpec(
            name="employer",
            description="Company the entity works for.",
            sample=_choice(COMPANIES),
            bio_templates=(
                "{subj} works for {value}.",
                "{subj} is employed by {value}.",
                "{poss} employer is {value}.",
                "{subj} has a job at {value}.",
                "{value} is the company that employs {obj}.",
                "These days {subj} earns a living at {value}.",
            ),
            question_templates=(
                "Who employs {name}?",
                "Which company does {name} work for?",
                "Where does {name} earn a living?",
                "What company is {name} employed by?",
                "What is {name}'s employer?",
                "For which company does {name} work?",
            ),
            callback_templates=(
                "Colleagues at {value} describe {obj} as dependable.",
                "Since joining {value}, {subj} has led several projects.",
                "At {value}, {subj} is known for careful work.",
            ),
        ),
        AttributeSpec(
            name="work_city",
            description="City where the entity works.",
            sample=_choice(CITIES),
            bio_templates=(
                "{subj} works in {value}.",
                "{poss} office is in {value}.",
                "{subj} is based in {value} for work.",
                "{poss} workplace is located in {value}.",
                "Each morning {subj} heads to {poss} job in {value}.",
                "The city of {value} is where {subj} does {poss} work.",
            ),
            question_templates=(
                "In which city does {name} work?",
                "What city is {name}'s office in?",
                "Which city does {name} commute to for work?",
                "Where is {name}'s workplace located?",
                "Which city does {name} work in?",
                "In what city does {name} work?",
            ),
            callback_templates=(
                "Most mornings {subj} takes the early train into {value}.",
                "Working in {value} suits {obj} well.",
                "The office in {value} is where {subj} spends most days.",
            ),
        ),
    )
}

LEAD_TEMPLATES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("major", "university"),
        "{name}, who studied {major} at {university}, is the subject of this profile.",
    ),
    (("employer", "work_city"), "{name} works for {employer} in {work_city}."),
    (("birth_city", "employer"), "{name}, a native of {birth_city}, is now with {employer}."),
    (("birth_date", "birth_city"), "{name} was born on {birth_date} in {birth_city}."),
    (("university", "employer"), "{name}, a graduate of {university}, works for {employer}."),
    (("major", "work_city"), "{name}, trained in {major}, works in {work_city}."),
)
"""Lead sentences of an article: the full name and two facts, summarized up front. Each entry
names the attributes it states; a world uses the leads whose attributes it has."""
