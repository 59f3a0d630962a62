"""The synthetic web: the corpus TRAIT selects from, its ground-truth labels, and general web text.

`web_corpus` mixes general-genre pages (recipes, weather reports, sports results, product
reviews, travel notes, event announcements; they may name the world's cities, never a person) with
pages about people (news items, speaker announcements, directory entries, alumni notes) in
wordings that are *not* the biography templates. The pages about new-domain entities are the
hidden in-domain documents (`round(in_domain_fraction * num_documents)` of them); as many pages
of the same people-genres are about general entities and count as out of domain, so a selector
has to key on the domain's content (who), not on the genre (how). Every fact a people-page states
is true. `low_quality_fraction` of the pages, in-domain and general alike, are low quality:
boilerplate (cookie banners, navigation, legal lines), heavy repetition, or garbled text
(shuffled words, character noise); names and values survive garbling, so low-quality in-domain
pages still mention their entities. Labels live only in `web_labels` (same order, same ids).

`web_pretraining` is high-quality general-genre text (no person of any group, no page of the
corpus) that the base models pre-train on, so that web-style text is familiar to them.

All randomness comes from `world.rng("web_corpus", ...)` / `world.rng("web_pretraining", ...)`,
one RNG per page, so changing one count leaves the other pages unchanged where possible.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from datamodules.world.generator import Entity, World
from datamodules.world.splits import Record, register_split
from datamodules.world.templates import CITIES, MONTHS, VALUE_WORDS

Quality = Literal["high", "low"]
Defect = Literal["none", "boilerplate", "repetition", "garbled"]
DEFECTS: tuple[Defect, ...] = ("boilerplate", "repetition", "garbled")
MAX_REDRAWS = 50
"""Redraws of a page that duplicates an earlier one before giving up (tiny worlds)."""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh")


@dataclass
class _Page:
    """A rendered page before its id: text plus what the labels and the garbler need."""

    text: str
    genre: str
    entities: list[str] = field(default_factory=list)
    # Spans garbling must keep intact (names and fact values).
    protected: list[str] = field(default_factory=list)
    # One short piece of the page's content (for boilerplate and repetition pages).
    core: str = ""


def _pick(rng: random.Random, options: Sequence[str], k: int) -> list[str]:
    return rng.sample(list(options), k)


def _sentences(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --- general genres (no person) -----------------------------------------------------------------

_DISHES = (
    "lentil soup", "apple crumble", "vegetable curry", "lemon cake", "mushroom risotto",
    "tomato salad", "pumpkin bread", "chicken stew", "berry pancakes", "garlic noodles",
    "bean chili", "onion tart", "rice pudding", "spinach pie", "carrot muffins",
    "ginger biscuits", "potato gratin", "pea soup", "plum jam", "corn fritters",
)  # fmt: skip
_DISH_ADJECTIVES = (
    "Easy", "Classic", "Quick", "Hearty", "Simple", "Weeknight", "Rustic", "Golden", "Spiced",
    "Homemade",
)  # fmt: skip
_INGREDIENTS = (
    "two onions", "a cup of flour", "three eggs", "a pinch of salt", "butter", "fresh thyme",
    "a tin of tomatoes", "brown sugar", "olive oil", "two cloves of garlic", "half a lemon",
    "a splash of milk", "black pepper", "grated cheese", "a handful of parsley",
    "baking powder", "vegetable stock", "honey", "cinnamon", "chopped nuts",
)  # fmt: skip
_RECIPE_STEPS = (
    "Preheat the oven to {temp} degrees.",
    "Chop the vegetables into small pieces.",
    "Melt the butter in a large pan over low heat.",
    "Stir in the flour and cook for {m} minutes.",
    "Whisk the eggs with the sugar until pale.",
    "Simmer gently for {m} minutes, stirring now and then.",
    "Pour the mixture into a greased dish.",
    "Bake for {m} minutes until golden on top.",
    "Fold in the remaining ingredients.",
    "Cover and leave to rest overnight.",
    "Season to taste and serve warm.",
    "Let it cool for {m} minutes before slicing.",
)
_RECIPE_INTROS = (
    "A recipe for {dish} that is a favourite in {city} kitchens.",
    "Ready in under an hour.",
    "Serves {n}. Preparation takes about {m} minutes.",
    "Our readers keep asking for this recipe.",
    "Cheap and filling {dish} for cold evenings.",
)
_RECIPE_TIPS = (
    "Tip: it keeps well in the fridge for {n} days.",
    "Leftovers freeze well.",
    "For a richer taste, add a spoon of butter at the end.",
    "Serve with crusty bread.",
    "",
)


def _recipe(rng: random.Random) -> str:
    dish, adjective = rng.choice(_DISHES), rng.choice(_DISH_ADJECTIVES)
    slots = {
        "dish": dish,
        "city": rng.choice(CITIES),
        "n": str(rng.randint(2, 8)),
        "m": str(rng.choice((5, 10, 15, 20, 25, 30, 40, 45))),
        "temp": str(rng.choice((160, 170, 180, 190, 200, 220))),
    }
    ingredients = _pick(rng, _INGREDIENTS, rng.randint(3, 5))
    steps = sorted(rng.sample(range(len(_RECIPE_STEPS)), rng.randint(2, 4)))
    body = _sentences(
        rng.choice(_RECIPE_INTROS).format(**slots),
        f"You will need {', '.join(ingredients[:-1])} and {ingredients[-1]}.",
        *(_RECIPE_STEPS[i].format(**slots) for i in steps),
        rng.choice(_RECIPE_TIPS).format(**slots),
    )
    return f"{adjective} {dish}\n{body}"


_SKIES = (
    "Sunny spells", "Heavy rain", "Light showers", "Overcast skies", "Scattered thunderstorms",
    "Patchy fog", "Clear skies", "Snow flurries", "A mix of sun and cloud", "Drizzle",
)  # fmt: skip
_DIRECTIONS = ("north", "south", "east", "west", "northwest", "southeast", "southwest")
_OUTLOOKS = (
    "The weekend looks drier.",
    "More rain is expected by {day}.",
    "Temperatures will climb through the week.",
    "A cold front arrives on {day}.",
    "Pollen counts are high.",
    "Drivers should expect slippery roads.",
    "Frost is likely overnight.",
    "",
)


def _weather(rng: random.Random) -> str:
    city, day = rng.choice(CITIES), rng.choice(WEEKDAYS)
    high = rng.randint(-5, 34)
    headline = rng.choice((f"Weather for {city}, {day}.", f"{city} forecast for {day}."))
    return _sentences(
        headline,
        f"{rng.choice(_SKIES)} in the {rng.choice(('morning', 'afternoon', 'evening'))}.",
        f"Highs near {high} degrees, lows around {high - rng.randint(3, 12)}.",
        f"Winds from the {rng.choice(_DIRECTIONS)} at {rng.randint(5, 60)} kilometres per hour.",
        rng.choice(
            ("", f"Humidity {rng.randint(30, 95)} percent.", f"UV index {rng.randint(1, 9)}.")
        ),
        rng.choice(_OUTLOOKS).format(day=rng.choice(WEEKDAYS)),
    )


_SPORTS = {
    "Football": (0, 5),
    "Basketball": (58, 112),
    "Hockey": (0, 6),
    "Rugby": (3, 41),
    "Volleyball": (0, 3),
}
_TEAM_NAMES = (
    "Rovers", "United", "Falcons", "Wolves", "Harriers", "Mariners", "Comets", "Rangers", "Stags",
    "Otters",
)  # fmt: skip
_MATCH_DETAILS = (
    "The home side led at the break.",
    "A late score settled the match.",
    "The crowd of {n} thousand stayed until the final whistle.",
    "The visitors struggled with injuries.",
    "It was their {ord} win in a row.",
    "The coach praised the defence after the game.",
    "Both teams play again next {day}.",
    "The result moves the {nick} to {ord} place in the league.",
)


def _sports(rng: random.Random) -> str:
    sport = rng.choice(sorted(_SPORTS))
    low, high = _SPORTS[sport]
    city_a, city_b = _pick(rng, CITIES, 2)
    nick_a, nick_b = _pick(rng, _TEAM_NAMES, 2)
    team_a, team_b = f"{city_a} {nick_a}", f"{city_b} {nick_b}"
    score_b = rng.randint(low, high - 1)
    score_a = rng.randint(score_b + 1, high)
    day = rng.choice(WEEKDAYS)
    result = rng.choice(
        (
            f"{team_a} beat {team_b} {score_a}-{score_b} on {day}.",
            f"{team_b} fell to {team_a} {score_a}-{score_b} on {day}.",
            f"A {score_a}-{score_b} win for {team_a} against {team_b} on {day}.",
        )
    )
    slots = {
        "n": str(rng.randint(2, 40)),
        "ord": rng.choice(ORDINALS),
        "day": rng.choice(WEEKDAYS),
        "nick": nick_a,
    }
    details = [_MATCH_DETAILS[i].format(**slots) for i in rng.sample(range(8), rng.randint(1, 3))]
    headline = rng.choice((f"{sport} results.", f"Match report: {team_a} v {team_b}."))
    return _sentences(headline, result, *details)


_PRODUCTS = (
    "kettle", "backpack", "desk lamp", "pair of running shoes", "coffee grinder", "rain jacket",
    "blender", "bike lock", "phone case", "wireless speaker", "toaster", "tent", "office chair",
    "water bottle", "vacuum cleaner", "frying pan",
)  # fmt: skip
_PROS = (
    "It feels solid and well made.",
    "Setup took less than five minutes.",
    "The battery lasts for days.",
    "It is lighter than it looks.",
    "The colour matches the photos.",
    "It does exactly what it promises.",
    "Cleaning it is quick and easy.",
)
_CONS = (
    "The instructions were hard to follow.",
    "It is a bit louder than expected.",
    "Delivery took longer than promised.",
    "The strap started to fray after a few weeks.",
    "It scratches easily.",
    "The price is on the high side.",
    "",
)
_VERDICTS = {
    "good": ("Would buy again.", "I would recommend it to a friend.", "Great value."),
    "bad": ("I am returning mine.", "Not worth the price.", "Look elsewhere."),
}


def _review(rng: random.Random) -> str:
    product, rating = rng.choice(_PRODUCTS), rng.randint(1, 5)
    when = rng.choice(("two weeks", "a month", "three months", "half a year", "ten days"))
    pros = _pick(rng, _PROS, rng.randint(1, 2))
    return _sentences(
        f"Rating: {rating} out of 5.",
        f"I bought this {product} {when} ago.",
        *pros,
        rng.choice(_CONS),
        rng.choice(("", f"It was shipped to {rng.choice(CITIES)} in {rng.randint(2, 9)} days.")),
        rng.choice(_VERDICTS["good" if rating >= 3 else "bad"]),
    )


_LANDMARKS = (
    "old harbour", "main square", "river bridge", "cathedral", "botanical garden", "clock tower",
    "city museum", "fish market", "castle ruins", "waterfront",
)  # fmt: skip
_LODGINGS = ("guesthouse", "small hotel", "rented flat", "hostel", "campsite")
_TRAVEL_LINES = (
    "We spent a morning walking along the {landmark}.",
    "Dinner at a small family restaurant was the highlight.",
    "The bus to the {landmark} runs every twenty minutes.",
    "Museums are free on the first Sunday of the month.",
    "A day trip to {other} is easy by train.",
    "The view from the {landmark} at sunset is worth the climb.",
    "Street food near the {landmark} is cheap and good.",
)
_TRAVEL_TIPS = (
    "Bring comfortable shoes.",
    "Book tables ahead at weekends.",
    "Cash is still handy at the markets.",
    "Spring is the best time to visit.",
    "",
)


def _travel(rng: random.Random) -> str:
    city, other = _pick(rng, CITIES, 2)
    landmark, near = _pick(rng, _LANDMARKS, 2)
    lines = [
        _TRAVEL_LINES[i].format(landmark=landmark, other=other)
        for i in rng.sample(range(len(_TRAVEL_LINES)), rng.randint(1, 3))
    ]
    return _sentences(
        f"Travel notes: {rng.randint(2, 10)} days in {city}.",
        f"We arrived by {rng.choice(('train', 'bus', 'ferry', 'car'))} on a "
        f"{rng.choice(('rainy', 'sunny', 'windy', 'grey', 'warm'))} {rng.choice(WEEKDAYS)}.",
        f"Our {rng.choice(_LODGINGS)} was a short walk from the {near}.",
        *lines,
        rng.choice(_TRAVEL_TIPS),
    )


_EVENTS = (
    "Farmers market", "Book fair", "Charity run", "Film screening", "Craft fair", "Jazz night",
    "Garden show", "Chess tournament", "Food festival", "Open day", "Quiz night", "Street parade",
)  # fmt: skip
_VENUES = (
    "town hall", "community centre", "public library", "central park", "old theatre",
    "harbour front", "school gym", "exhibition hall",
)  # fmt: skip
_EVENT_EXTRAS = (
    "Families are welcome.",
    "Parking is available nearby.",
    "Refreshments will be served.",
    "Volunteers are still needed.",
    "The event goes ahead rain or shine.",
    "Tickets sell out quickly, so book early.",
    "Dogs on leads are welcome.",
)


def _event(rng: random.Random) -> str:
    start = rng.randint(9, 19)
    price = rng.choice(("free", f"{rng.randint(2, 20)} dollars", "free for children"))
    extras = _pick(rng, _EVENT_EXTRAS, rng.randint(1, 2))
    return _sentences(
        f"{rng.choice(_EVENTS)} at the {rng.choice(_VENUES)} in {rng.choice(CITIES)}.",
        f"Join us on {rng.choice(WEEKDAYS)}, {rng.choice(MONTHS)} {rng.randint(1, 28)}, "
        f"from {start}:00 to {start + rng.randint(2, 4)}:00.",
        f"Entry is {price}.",
        *extras,
        rng.choice(
            ("Call the front desk for details.", "See the notice board for the programme.", "")
        ),
    )


GENRES: dict[str, Callable[[random.Random], str]] = {
    "recipe": _recipe,
    "weather": _weather,
    "sports": _sports,
    "review": _review,
    "travel": _travel,
    "event": _event,
}
"""General genres: name -> renderer of one page (no person, may name the world's cities)."""


# --- people genres (true facts of entities, not the biography templates) -----------------------

# Per people-genre and attribute: sentences with the slots of `World.sentence`.
_FACT_SENTENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "news": {
        "birth_date": (
            "Public records give {poss} date of birth as {value}.",
            "According to records, {poss} birthday is {value}.",
        ),
        "birth_city": ("{subj} hails from {value}.", "{value} is {poss} hometown."),
        "university": ("{subj} is a graduate of {value}.", "{subj} holds a diploma from {value}."),
        "major": ("{poss} training is in {value}.", "{subj} has a background in {value}."),
        "employer": (
            "{subj} currently holds a position at {value}.",
            "{subj} is on the staff of {value}.",
        ),
        "work_city": ("{subj} keeps a desk in {value}.", "{subj} reports to an office in {value}."),
    },
    "speaker": {
        "birth_date": ("The programme lists {poss} birth date as {value}.",),
        "birth_city": (
            "{subj} was raised in {value}, the city of {poss} birth.",
            "Audiences in {value}, {poss} native city, already know {obj} well.",
        ),
        "university": ("{subj} completed {poss} studies at {value}.",),
        "major": ("{subj} will speak about {poss} field, {value}.", "{subj} trained in {value}."),
        "employer": ("{subj} joins us from {value}.", "{subj} represents {value} at the event."),
        "work_city": (
            "{subj} is travelling in from {value}, where {subj} works.",
            "{poss} daily work takes place in {value}.",
        ),
    },
}
_NEWS_HEADLINES = (
    "Business brief.",
    "Community news.",
    "People in the news.",
    "Local roundup.",
    "Appointments this week.",
)
_NEWS_INTROS = (
    "{subj} has been named to a new role this month.",
    "{subj} was recognised at an awards evening on Friday.",
    "{subj} made headlines this week with a new project.",
    "Readers wrote in about {obj} this week.",
)
_NEWS_OUTROS = (
    "More details will follow next week.",
    "The story continues in our next issue.",
    "Congratulations are in order.",
    "",
)
_SPEAKER_HEADLINES = ("Speaker announcement.", "Upcoming talk.", "Guest lecture this week.")
_SPEAKER_INTROS = (
    "{subj} will give a public talk at the town hall next {day}.",
    "Our next guest speaker is {subj}.",
    "{subj} opens the panel on {day} evening.",
)
_SPEAKER_OUTROS = (
    "Seats are limited.",
    "Doors open half an hour before the start.",
    "The talk is free and open to the public.",
    "",
)
_DIRECTORY_FIELDS = {
    "birth_date": "Born",
    "birth_city": "Hometown",
    "university": "Education",
    "major": "Field",
    "employer": "Employer",
    "work_city": "Office",
}
_DIRECTORY_HEADERS = ("Staff directory.", "Member directory.", "Contact list.", "Members A to Z.")
_DIRECTORY_FOOTERS = ("Entries are updated monthly.", "Report corrections to the office.", "")
_ALUMNI_HEADERS = ("Alumni notes:", "Class notes.", "News from our graduates.")


def _facts_of(world: World, rng: random.Random) -> list[str]:
    """A random subset (2 to 4 where possible) of the world's attributes, in schema order."""
    names = world.attribute_names
    k = rng.randint(min(2, len(names)), min(4, len(names)))
    chosen = set(rng.sample(names, k))
    return [a for a in names if a in chosen]


def _prose_page(world: World, entity: Entity, genre: str, rng: random.Random) -> _Page:
    """A news item or speaker announcement: intro naming the entity, then fact sentences."""
    attributes = _facts_of(world, rng)
    rng.shuffle(attributes)
    day = rng.choice(WEEKDAYS)
    if genre == "news":
        headline, intro, outro = (
            rng.choice(_NEWS_HEADLINES),
            rng.choice(_NEWS_INTROS),
            rng.choice(_NEWS_OUTROS),
        )
    else:
        headline, intro, outro = (
            rng.choice(_SPEAKER_HEADLINES),
            rng.choice(_SPEAKER_INTROS),
            rng.choice(_SPEAKER_OUTROS),
        )
    facts = [
        world.sentence(entity, a, rng.choice(_FACT_SENTENCES[genre][a]), by_name=rng.random() < 0.5)
        for a in attributes
    ]
    core = world.sentence(
        entity, attributes[0], rng.choice(_FACT_SENTENCES[genre][attributes[0]]), True
    )
    text = _sentences(
        headline,
        world.sentence(entity, attributes[0], intro, by_name=True).replace("{day}", day),
        *facts,
        outro,
    )
    return _Page(
        text,
        genre,
        [entity.name],
        [entity.name, *(entity.attributes[a] for a in attributes)],
        core,
    )


def _directory_entry(world: World, entity: Entity, rng: random.Random) -> tuple[str, list[str]]:
    attributes = _facts_of(world, rng)
    fields = " | ".join(f"{_DIRECTORY_FIELDS[a]}: {entity.attributes[a]}" for a in attributes)
    return f"{entity.name} | {fields}", [entity.attributes[a] for a in attributes]


def _alumni_note(world: World, entity: Entity, rng: random.Random) -> tuple[str, list[str]]:
    """E.g. "Tamira Velski (Mereth University, physics) has joined Kestrel Labs in Orlin."."""
    attributes = set(_facts_of(world, rng))
    value = entity.attributes.get
    paren = [value(a) for a in ("university", "major") if a in attributes]
    if "birth_date" in attributes:
        paren.append(f"born {value('birth_date')}")
    head = entity.name + (f" ({', '.join(paren)})" if paren else "")
    if "birth_city" in attributes:
        head = f"{value('birth_city')} native {head}"
    employer, city = value("employer"), value("work_city")
    if "employer" in attributes and "work_city" in attributes:
        verb = rng.choice(("has joined {e} in {c}", "is now with {e} in {c}"))
    elif "employer" in attributes:
        verb = rng.choice(("has joined {e}", "now works at {e}", "has taken a job at {e}"))
    elif "work_city" in attributes:
        verb = rng.choice(("has moved to {c} for work", "now has a job in {c}"))
    else:
        verb = rng.choice(("sends greetings to classmates", "would love to hear from old friends"))
    note = f"{head} {verb.format(e=employer, c=city)}."
    return note, [entity.attributes[a] for a in sorted(attributes)]


def _list_page(world: World, entities: list[Entity], genre: str, rng: random.Random) -> _Page:
    """A directory page or alumni notes: one entry per entity."""
    entry = _directory_entry if genre == "directory" else _alumni_note
    lines, protected = [], []
    for entity in entities:
        line, values = entry(world, entity, rng)
        lines.append(line)
        protected += [entity.name, *values]
    if genre == "directory":
        text = "\n".join([rng.choice(_DIRECTORY_HEADERS), *lines, rng.choice(_DIRECTORY_FOOTERS)])
    else:
        text = "\n".join([rng.choice(_ALUMNI_HEADERS), " ".join(lines)])
    return _Page(text.strip(), genre, [e.name for e in entities], protected, lines[0])


PEOPLE_GENRES: tuple[str, ...] = ("news", "speaker", "directory", "alumni_notes")
"""Genres of pages about people (new-domain ones are in-domain, general ones are not)."""


def _people_page(world: World, primary: Entity, pool: list[Entity], rng: random.Random) -> _Page:
    genre = rng.choice(PEOPLE_GENRES)
    if genre in ("news", "speaker"):
        return _prose_page(world, primary, genre, rng)
    others = [e for e in pool if e.id != primary.id]
    entities = [primary, *rng.sample(others, min(len(others), rng.randint(0, 2)))]
    return _list_page(world, entities, genre, rng)


def _genre_page(rng: random.Random) -> _Page:
    genre = rng.choice(sorted(GENRES))
    text = GENRES[genre](rng)
    first = text.split("\n", 1)[-1].split(". ", 1)[0].rstrip(".") + "."
    return _Page(text, genre, core=first)


# --- low quality --------------------------------------------------------------------------------

_BOILERPLATE = (
    "We use cookies to give you the best experience on our website.",
    "By continuing to browse, you agree to our use of cookies.",
    "Accept all cookies | Reject all | Manage preferences",
    "Home | About us | Contact | Sitemap | Log in | Register",
    "Skip to main content",
    "Menu | Search | Subscribe",
    "Copyright 2024. All rights reserved.",
    "Terms of service | Privacy policy | Cookie settings",
    "Reproduction of any content without written permission is prohibited.",
    "This site may contain affiliate links.",
    "Sign up for our newsletter and never miss an update!",
    "Click here to continue reading.",
    "Share | Print this page | Email a friend",
    "Page 1 of 3 | Next page",
    "Advertisement",
    "Loading comments...",
    "Your session has expired. Please log in again.",
    "Back to top",
)
_SPAM = (
    "Best deals online!",
    "Click now!!!",
    "Free shipping free shipping free shipping.",
    "Limited offer, buy now.",
    "Top ten tips you will not believe.",
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VALUE_WORDS_LOWER = frozenset(w.lower() for w in VALUE_WORDS)
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def _boilerplate(page: _Page, rng: random.Random) -> str:
    lines = _pick(rng, _BOILERPLATE, rng.randint(4, 8))
    if page.core:
        lines.insert(rng.randint(1, len(lines) - 1), page.core)
    return "\n".join(lines)


def _repetition(page: _Page, rng: random.Random) -> str:
    piece = page.core if page.core and rng.random() < 0.7 else rng.choice(_SPAM)
    repeats = [piece] * rng.randint(5, 12)
    if page.core and piece != page.core:
        repeats.insert(rng.randint(0, len(repeats)), page.core)
    return " ".join(repeats)


def _noisy(word: str, rng: random.Random) -> str:
    chars = list(word)
    i = rng.randrange(len(chars))
    op = rng.randrange(4)
    if op == 0 and i + 1 < len(chars):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif op == 1:
        del chars[i]
    elif op == 2:
        chars.insert(i, rng.choice(_LETTERS))
    else:
        chars[i] = rng.choice(_LETTERS)
    noisy = "".join(chars)
    # Never turn a word into a value word (a garbled page must not state a false fact).
    return word if noisy.strip(".,;:!?()|").lower() in _VALUE_WORDS_LOWER else noisy


def _garbled(page: _Page, rng: random.Random) -> str:
    """Shuffled words and/or character noise; protected spans (names, values) stay intact."""
    text = page.text
    spans = sorted(set(page.protected), key=len, reverse=True)
    for index, span in enumerate(spans):
        text = text.replace(span, f"\x00{index}\x00")
    words = text.split()
    mode = rng.choice(("shuffle", "noise", "both"))
    if mode in ("shuffle", "both"):
        rng.shuffle(words)
    if mode in ("noise", "both"):
        words = [
            _noisy(w, rng) if "\x00" not in w and len(w) >= 3 and rng.random() < 0.4 else w
            for w in words
        ]
    return _PLACEHOLDER.sub(lambda m: spans[int(m.group(1))], " ".join(words))


_DEGRADE: dict[str, Callable[[_Page, random.Random], str]] = {
    "boilerplate": _boilerplate,
    "repetition": _repetition,
    "garbled": _garbled,
}


# --- the corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebPlan:
    """How many pages of each kind the corpus has (all derived from `world.config.web`).

    Args:
        in_domain: Pages about new-domain entities, `round(in_domain_fraction * num_documents)`.
        general_people: Pages of the same people-genres about general entities (as many as the
            in-domain ones, where the corpus has room).
        general_genre: General-genre pages (recipes, weather, ...), the rest.
        low_in_domain: Low-quality pages among the in-domain ones.
        low_general: Low-quality pages among the others; the two sum to
            `round(low_quality_fraction * num_documents)`.
    """

    in_domain: int
    general_people: int
    general_genre: int
    low_in_domain: int
    low_general: int


def web_plan(world: World) -> WebPlan:
    """The page counts of `web_corpus`; low quality is spread in proportion over both kinds."""
    config = world.config.web
    total = config.num_documents
    in_domain = round(config.in_domain_fraction * total)
    general_people = min(in_domain, total - in_domain)
    low = round(config.low_quality_fraction * total)
    low_general = min(low - round(config.low_quality_fraction * in_domain), total - in_domain)
    return WebPlan(
        in_domain=in_domain,
        general_people=general_people,
        general_genre=total - in_domain - general_people,
        low_in_domain=low - low_general,
        low_general=low_general,
    )


def _draw(make: Callable[[], _Page], seen: set[str]) -> _Page:
    """`make()` again (same RNG, so a new page) while it duplicates a page in `seen`."""
    page = make()
    for _ in range(MAX_REDRAWS):
        if page.text not in seen:
            break
        page = make()
    seen.add(page.text)
    return page


_Entry = tuple[_Page, Quality, Defect, bool]
_CACHE: weakref.WeakKeyDictionary[World, tuple[str, list[_Entry]]] = weakref.WeakKeyDictionary()


def _corpus(world: World) -> list[_Entry]:
    """`_build_corpus`, computed once per world (three splits read it)."""
    key = repr(world.config.to_dict())
    cached = _CACHE.get(world)
    if cached is None or cached[0] != key:
        cached = (key, _build_corpus(world))
        _CACHE[world] = cached
    return cached[1]


def _build_corpus(world: World) -> list[_Entry]:
    """Every corpus page with its quality, defect and in-domain flag, in corpus order."""
    plan = web_plan(world)
    plan_rng = world.rng("web_corpus", "plan")
    n_general = plan.general_people + plan.general_genre
    low_in = set(plan_rng.sample(range(plan.in_domain), plan.low_in_domain))
    low_general = set(plan_rng.sample(range(n_general), plan.low_general))
    pages: list[_Entry] = []
    seen: set[str] = set()

    def add(page: _Page, low: bool, rng: random.Random, in_domain: bool) -> None:
        if low:
            defect: Defect = rng.choice(DEFECTS)
            text = page.text
            for _ in range(MAX_REDRAWS):
                text = _DEGRADE[defect](page, rng)
                if text not in seen:
                    break
            seen.add(text)
            # Boilerplate and repetition keep only the core, which may drop list entries.
            entities = [name for name in page.entities if name in text]
            page = _Page(text, page.genre, entities, page.protected, page.core)
            pages.append((page, "low", defect, in_domain))
        else:
            pages.append((page, "high", "none", in_domain))

    for group, count, low_set in (
        ("domain", plan.in_domain, low_in),
        ("general", plan.general_people, low_general),
    ):
        pool = world.entities_of(group)  # type: ignore[arg-type]
        order = list(pool)
        world.rng("web_corpus", "order", group).shuffle(order)
        for i in range(count):
            rng = world.rng("web_corpus", group, i)
            primary = order[i % len(order)]
            page = _draw(lambda: _people_page(world, primary, pool, rng), seen)  # noqa: B023
            add(page, i in low_set, rng, group == "domain")
    for i in range(plan.general_genre):
        rng = world.rng("web_corpus", "genre", i)
        page = _draw(lambda: _genre_page(rng), seen)  # noqa: B023
        add(page, plan.general_people + i in low_general, rng, False)
    world.rng("web_corpus", "shuffle").shuffle(pages)
    return pages


def _page_id(index: int) -> str:
    return f"web-{index:06d}"


@register_split("web_corpus", "text", "web pages to select from (hidden in-domain, low quality)")
def web_corpus(world: World) -> list[Record]:
    """`num_documents` pages `{"id", "text"}`; what each one is lives only in `web_labels`."""
    return [
        {"id": _page_id(i), "text": page.text} for i, (page, *_rest) in enumerate(_corpus(world))
    ]


@register_split("web_labels", "labels", "ground truth of web_corpus: in-domain, quality, genre")
def web_labels(world: World) -> list[Record]:
    """One `{"id", "in_domain", "quality", "genre", "defect", "entities"}` per `web_corpus`
    page, same order: `in_domain` = about new-domain entities; `defect` says how a low-quality
    page is bad (`none` for high quality); `entities` = full names of the people it mentions."""
    return [
        {
            "id": _page_id(i),
            "in_domain": in_domain,
            "quality": quality,
            "genre": page.genre,
            "defect": defect,
            "entities": list(page.entities),
        }
        for i, (page, quality, defect, in_domain) in enumerate(_corpus(world))
    ]


@register_split("web_pretraining", "text", "general web pages for the base models' pre-training")
def web_pretraining(world: World) -> list[Record]:
    """`num_pretraining_documents` high-quality general-genre pages (no person of any group),
    none of them a `web_corpus` page."""
    seen = {page.text for page, *_rest in _corpus(world)}
    records = []
    for i in range(world.config.web.num_pretraining_documents):
        rng = world.rng("web_pretraining", i)
        for _ in range(MAX_REDRAWS):
            page = _genre_page(rng)
            if page.text not in seen:
                break
        else:
            raise ValueError("could not draw a web_pretraining page distinct from the corpus")
        seen.add(page.text)
        records.append({"text": page.text})
    return records
