"""The built-in corpus: simple English children's stories, generated, never copied.

    for story in generate_stories("train", n_chars=4_000_000, seed=0): ...

In the spirit of TinyStories (Eldan & Li, 2023): short stories with named characters,
a place, an object, feelings, a problem and its resolution, and some dialogue in quotes.
Every story is drawn from a small probabilistic grammar by its own `random.Random`, seeded
by (split, seed, story index), so

- the corpus is deterministic and does not depend on how much of it is read;
- train and val come from disjoint seed streams: the val split is fixed whatever n_chars;
- story i can be regenerated alone (no state is carried from story to story).

The grammar tracks each character's pronouns (he/she/it, him/her, his/her) and tells
everything in the past tense, with dialogue in the present, so that a tiny model has
real agreement and tense patterns to learn. 10 plots x 2-4 phrasings per beat x ~200 names
x 40 places x 100 objects x ... make repeated whole stories vanishingly rare (the test checks
that the first 4M characters, ~8k stories, are all distinct), and the ~1,100 distinct words
support a BPE vocabulary of up to ~2,500 tokens.

Speed: pure Python, 10-20 MB/s on one core (20M characters in 1-2 s).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from stlm.data.story_words import (
    ACTIVITIES,
    ANIMALS,
    BAD_FEELINGS,
    BOYS,
    COLORS,
    ENDINGS,
    FOODS,
    GIRLS,
    GOOD_FEELINGS,
    MORALS,
    OBJECTS,
    OPENERS,
    PET_NAMES,
    PLACES,
    SAID,
    SCENES,
    TRAITS,
)

# --------------------------------------------------------------------------- grammar helpers


def _person(rng: random.Random, exclude: str = "") -> dict:
    """A character: a child (60%) or a named animal, with matching pronouns."""
    r = rng.random()
    if r < 0.6:
        girl = rng.random() < 0.5
        name = rng.choice(GIRLS if girl else BOYS)
        while name == exclude:
            name = rng.choice(GIRLS if girl else BOYS)
        kind = "girl" if girl else "boy"
    else:
        girl = rng.random() < 0.5
        name = rng.choice(PET_NAMES)
        while name == exclude:
            name = rng.choice(PET_NAMES)
        kind = rng.choice(ANIMALS)[0]
    he, him, his = ("she", "her", "her") if girl else ("he", "him", "his")
    return {"name": name, "kind": kind, "he": he, "him": him, "his": his}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _context(rng: random.Random) -> dict[str, str]:
    """Everything a template may mention: hero {H}, friend {F}, parent {P}, object {obj}, place {place}."""
    hero = _person(rng)
    friend = _person(rng, exclude=hero["name"])
    place, prep, sight = rng.choice(PLACES)
    noun, plural = rng.choice(OBJECTS)
    color = rng.choice(COLORS)
    obj = f"{color} {noun}"
    act_inf, act_past = rng.choice(ACTIVITIES)
    mom = rng.random() < 0.5
    animal, animals, sound = rng.choice(ANIMALS)
    food = rng.choice(FOODS)
    ctx = {
        "H": hero["name"],
        "he": hero["he"],
        "him": hero["him"],
        "his": hero["his"],
        "kind": hero["kind"],
        "trait": rng.choice(TRAITS),
        "F": friend["name"],
        "fhe": friend["he"],
        "fhim": friend["him"],
        "fhis": friend["his"],
        "fkind": friend["kind"],
        "P": "Mom" if mom else "Dad",
        "P_low": "mom" if mom else "dad",
        "phe": "she" if mom else "he",
        "phis": "her" if mom else "his",
        "place": place,
        "prep": prep,
        "sight": sight,
        "obj": obj,
        "a_obj": obj if plural else f"{_article(obj)} {obj}",
        "noun": noun,
        "it": "them" if plural else "it",
        "It": "They" if plural else "It",
        "was": "were" if plural else "was",
        "act": act_inf,
        "act_past": act_past,
        "animal": animal,
        "animals": animals,
        "sound": sound,
        "a_animal": f"{_article(animal)} {animal}",
        "food": food,
        "a_food": f"{_article(food)} {food}",
        "good": rng.choice(GOOD_FEELINGS),
        "bad": rng.choice(BAD_FEELINGS),
        "said": rng.choice(SAID),
        "fsaid": rng.choice(SAID),
    }
    # Sentence-initial forms.
    ctx.update(
        He=_cap(ctx["he"]),
        His=_cap(ctx["his"]),
        Fhe=_cap(ctx["fhe"]),
        Phe=_cap(ctx["phe"]),
        Prep=_cap(prep),
        himself="herself" if hero["him"] == "her" else "himself",
    )
    ctx["a_kind"] = f"{_article(ctx['trait'])} {ctx['trait']} {ctx['kind']}"
    ftrait = rng.choice(TRAITS)
    ctx["a_fkind"] = f"{_article(ftrait)} {ftrait} {ctx['fkind']}"
    # Who gets the gift in the "gift" plot: the friend or the parent.
    ctx["R"] = ctx["F"] if rng.random() < 0.5 else ctx["P"]
    return ctx


# Each beat is a list of alternative templates (one is picked); a plot is a list of beats.
# fmt: off
INTROS = [
    ["{Opener} there was {a_kind} named {H}.", "{Opener} {a_kind} named {H} went out to play.",
     "{Opener} {H} was {a_kind} who loved to {act}.", "{Opener} {a_kind} called {H} woke up early."],
    ["{He} loved to {act} with {his} friend {F}, {a_fkind}.", "{His} best friend was {F}.",
     "{H} had a friend named {F}, who was {a_fkind}.", "{He} lived in a small house with {his} {P_low}.",
     "Every day, {H} liked to {act}.", "{He} had {a_obj} that {he} loved very much."],
]
SETTINGS = ["{He} went to the {place} with {F}. {Scene}", "{H} and {F} went to play {prep} the {place}.",
            "{Prep} the {place}, {H} saw {sight}.", "The sun was warm, and the sky was blue. {Scene}",
            "{H} and {F} walked to the {place}. They saw {sight}."]

PLOTS: dict[str, list[list[str]]] = {
    "lost": [
        ["{H} had {a_obj}. {He} took {it} everywhere.", "{H} brought {his} {obj} to the {place}."],
        SETTINGS,
        ["They played all morning. When it was time to go home, {H} could not find {his} {obj}.",
         "After a while, {H} looked down. {His} {obj} {was} gone!"],
        ["\"Oh no! Where is my {noun}?\" {H} {said}. {He} felt very {bad}.",
         "{H} started to cry. \"I lost my {noun}!\""],
        ["\"Don't worry, I will help you look,\" said {F}.", "{F} {fsaid}, \"Let's look for {it} together.\""],
        ["They looked under the bench and behind a big tree. They looked in the tall grass.",
         "They looked high and low. They looked near the water and under the leaves."],
        ["At last, {F} saw something {prep} a bush. It was the {obj}!",
         "Then {H} heard {a_animal}. The {animal} had the {obj}! It was playing with {it}.",
         "Then they saw {it}, right where they had eaten {a_food}."],
        ["{H} was so {good}. \"Thank you, {F}!\" {he} said.",
         "{H} hugged {his} {noun} and smiled at {F}."],
        ["{Moral}", "{Ending}"],
    ],
    "broken": [
        ["{H} had {a_obj}. {It} {was} {his} favorite toy.", "{H} got {a_obj} from {his} {P_low}."],
        ["One day, {he} played with {it} {prep} the {place}.", "{He} showed {it} to {F} {prep} the {place}."],
        ["Then {F} pulled {it} too hard, and {it} broke.", "{H} dropped {it}, and {it} broke into two pieces.",
         "A big dog ran by and stepped on {it}. Crack!"],
        ["{H} was very {bad}. {He} began to cry.", "\"My {noun}!\" {H} {said}. Tears rolled down {his} face."],
        ["{F} felt bad too. \"I am sorry,\" {fhe} said.", "{F} said, \"Let's ask your {P_low} for help.\""],
        ["They went home to {P}. {P} looked at the {noun} and smiled.",
         "{P} came and said, \"I can fix {it}. We need some glue.\""],
        ["{P} used glue and tape. Soon the {noun} looked almost new.",
         "{P} worked very carefully. After a little while, the {noun} was fixed."],
        ["\"Thank you, {P}!\" {H} {said}. {He} felt {good} again.",
         "{H} gave {P} a big hug. Then {he} and {F} played with the {noun} together."],
        ["{Moral}", "{Ending}"],
    ],
    "share": [
        ["{H} had {a_obj}. {He} did not like to share {it}.", "{H} got {a_obj} for {his} birthday."],
        SETTINGS,
        ["{F} saw the {noun} and wanted to play with {it} too.", "{F} asked, \"Can I play with your {noun}?\""],
        ["\"No! It is mine!\" {H} {said}.", "{H} held the {noun} close and said, \"No, you can't.\""],
        ["{F} was {bad}. {Fhe} sat down alone.", "{F} walked away. {Fhe} felt very {bad}."],
        ["{H} played alone, but it was not fun. {He} felt bad inside.",
         "Soon {H} saw that {F} was {bad}. {H} did not feel happy anymore."],
        ["{H} went to {F} and said, \"I am sorry. Let's play together.\"",
         "{H} gave the {noun} to {F} and said, \"You can have a turn.\""],
        ["{F} smiled. They took turns and laughed a lot.", "{F} was so {good}. They played all day."],
        ["{Moral}", "{Ending}"],
    ],
    "fear": [
        ["{H} was afraid of the dark.", "{H} was afraid of the big slide {prep} the {place}.",
         "{H} was scared of the deep water.", "{H} was scared of the loud thunder."],
        ["Every time {he} thought about it, {his} tummy felt funny.",
         "{He} did not want anyone to know."],
        ["One day, {F} said, \"Come on, {H}! It will be fun!\"", "{P} asked, \"Why are you so quiet, {H}?\""],
        ["\"I am scared,\" {H} {said} in a small voice.", "{H} shook {his} head. \"I can't. I am too scared.\""],
        ["{F} held {his} hand. \"I will be right here with you,\" {fhe} said.",
         "{P} gave {H} a hug and said, \"It is okay to be scared. You can try a little bit.\""],
        ["{H} took a deep breath. {He} tried, just a little.",
         "{H} counted to three. Then {he} was brave and tried."],
        ["It was not so bad! It was fun!", "{H} laughed. There was nothing to be afraid of."],
        ["{H} felt very {good}. \"I did it!\" {he} shouted.", "{F} clapped. \"You were so brave!\""],
        ["{Moral}", "{Ending}"],
    ],
    "animal": [
        SETTINGS,
        ["Suddenly, {H} heard a sad sound. It was a little {animal}.",
         "Then {H} saw a small {animal}. The {animal} {sound} and looked scared."],
        ["The {animal} was stuck in a tree.", "The {animal} was stuck in the mud.",
         "The {animal} was caught in a fence.", "The {animal} could not find its mom."],
        ["\"We have to help it,\" {H} {said}.", "{H} said, \"Poor {animal}! Let's help it.\""],
        ["{H} tried to help, but {he} was too small.", "{H} reached out, but {he} could not do it alone."],
        ["{F} came to help. Together, they were strong enough.",
         "{H} called {P}. {P} came and helped them."],
        ["At last, the {animal} was free! It jumped and {sound}.",
         "Soon the {animal} was safe. It licked {H} on the hand."],
        ["The {animal} was {good}. It followed {H} all the way home.",
         "{H} gave the {animal} a piece of {his} {food}, and the {animal} ate it all."],
        ["{Moral}", "{Ending}"],
    ],
    "wish": [
        ["{H} wanted to {act} more than anything.", "{H} had a big wish. {He} wanted to {act} like {F}."],
        ["{He} tried, but {he} could not do it.", "{He} tried once, twice, three times. Each time it went wrong."],
        ["{H} felt {bad}. \"I will never do it,\" {he} {said}.",
         "{H} sat down and frowned. \"It is too hard!\""],
        ["{F} came by. \"Don't give up,\" {fhe} said. \"I will show you.\"",
         "{P} said, \"Everyone has to practice. Try again tomorrow.\""],
        ["So {H} practiced every day.", "{H} tried again, slowly and carefully."],
        ["One day, {he} did it! {He} could {act}!", "At last, it worked. {H} could {act} too!"],
        ["\"Look at me!\" {H} shouted. Everyone clapped.", "{H} felt so {good}. {He} smiled from ear to ear."],
        ["{Moral}", "{Ending}"],
    ],
    "weather": [
        ["{H} and {F} wanted to have a picnic {prep} the {place}.",
         "{H} planned a fun day {prep} the {place} with {F}."],
        ["They packed {a_food}, some juice and {a_obj}.", "{P} made them {a_food} to take along."],
        ["But then, dark clouds came. It started to rain.", "But the wind blew hard, and it began to rain."],
        ["\"Oh no! Our day is ruined,\" {H} {said}. {He} felt {bad}.",
         "{H} looked out the window and sighed."],
        ["{P} had an idea. \"Why don't you have a picnic inside?\" "
         "So they put a blanket on the floor and ate {a_food}.",
         "{F} said, \"We can still have fun. Let's jump in the puddles!\" "
         "They put on boots and jumped in every puddle. Splash!",
         "{P} said, \"Let's build a fort with pillows.\" They made a big fort and played games inside."],
        ["It was even more fun than they had planned.", "They laughed so much that they forgot about the rain."],
        ["{Ending}"],
    ],
    "warning": [
        ["{H} wanted to go to the {place} alone.", "{H} liked to play near the {place}."],
        ["{P} said, \"Be careful, {H}. Do not go too far.\"", "\"Stay close to me,\" {P} said."],
        ["But {H} did not listen. {He} ran off to {act}.", "{H} did not listen. {He} thought {he} knew best."],
        ["Soon {H} was lost. {He} did not know the way home.", "{H} slipped and fell in the mud. {He} was all dirty."],
        ["{H} was {bad}. \"{P}! Where are you?\" {he} {said}.", "{H} began to cry. {He} wished {he} had listened."],
        ["{P} found {him} and picked {him} up.", "Then {H} heard {P} calling {his} name. {He} ran to {P}."],
        ["\"I am sorry, {P},\" {H} said. \"I will listen next time.\"",
         "{P} hugged {him} and said, \"I am glad you are safe.\""],
        ["{H} learned to listen to {his} {P_low}.", "{Ending}"],
    ],
    "gift": [
        ["It was {R}'s birthday soon.", "{H} wanted to make {R} happy."],
        ["{H} wanted to give a special gift, but {he} had no money.",
         "{H} thought and thought. What could {he} give?"],
        ["Then {he} had an idea. {He} would make a card!", "{He} decided to bake {a_food} all by {himself}."],
        ["{He} worked very hard. It was not easy.", "{He} used {his} best crayons and a lot of glitter."],
        ["When it was ready, {H} gave it with a big smile.", "{H} hid the gift behind {his} back. \"Surprise!\""],
        ["\"I love it! Thank you, {H}!\" {R} said.", "{R} was so {good}. It was the best gift ever."],
        ["{H} felt warm inside. Giving was even better than getting.", "{Ending}"],
    ],
    "new_friend": [
        ["{Prep} the {place}, {H} saw a new {fkind}. It was {F}.",
         "One day, a new {fkind} named {F} came to the {place}."],
        ["{F} was sitting alone and looked {bad}.", "{F} did not know anyone. {Fhe} was very shy."],
        ["{H} walked over and said, \"Hi! I am {H}. Do you want to play?\"",
         "{H} smiled at {F} and asked, \"Do you want to {act} with me?\""],
        ["{F} smiled a little. \"Yes, please,\" {fhe} said.", "{F} nodded and stood up."],
        ["They had so much fun. They {act_past} and laughed together.",
         "They {act_past} all afternoon. Then they shared {a_food}."],
        ["When it was time to go, {F} said, \"Can we play again tomorrow?\"",
         "{F} was not {bad} anymore. {Fhe} was {good}."],
        ["\"Of course!\" {H} {said}.", "{Ending}"],
    ],
}
PLOT_NAMES = list(PLOTS)
# fmt: on


def _story(rng: random.Random) -> str:
    ctx = _context(rng)
    ctx["Opener"] = rng.choice(OPENERS)
    ctx["Scene"] = rng.choice(SCENES)
    ctx["Ending"] = rng.choice(ENDINGS).format_map(ctx)
    plot = rng.choice(PLOT_NAMES)
    ctx["Moral"] = rng.choice(MORALS.get(plot, ENDINGS)).format_map(ctx)
    intro = " ".join(rng.choice(beat) for beat in INTROS)
    body = []
    for beat in PLOTS[plot]:
        body.append(rng.choice(beat))
    # Paragraphs: intro, then the plot split in two or three parts.
    cut1 = rng.randint(2, 4)
    cut2 = rng.randint(cut1 + 1, len(body) - 1) if len(body) > cut1 + 2 else len(body)
    paras = [intro, " ".join(body[:cut1]), " ".join(body[cut1:cut2]), " ".join(body[cut2:])]
    text = "\n\n".join(p for p in paras if p)
    return text.format_map(ctx)


def story(split: str, index: int, seed: int = 0) -> str:
    """Story number `index` of a split, on its own (the same text generate_stories yields)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    # Disjoint seed streams: the split name is part of the seed string.
    return _story(random.Random(f"stlm-stories/{split}/{seed}/{index}"))


def generate_stories(split: str, n_chars: int | None, seed: int = 0) -> Iterator[str]:
    """Yield stories of `split` ("train" or "val") until at least n_chars characters (None = forever)."""
    total, i = 0, 0
    while n_chars is None or total < n_chars:
        s = story(split, i, seed)
        total += len(s)
        i += 1
        yield s
