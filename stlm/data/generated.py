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

# --------------------------------------------------------------------------- vocabulary

GIRLS = [
    "Lily",
    "Mia",
    "Sue",
    "Anna",
    "Lucy",
    "Emma",
    "Zoe",
    "Ella",
    "Rosie",
    "Amy",
    "Kate",
    "Nora",
    "Ruby",
    "Sara",
    "Jenny",
    "Molly",
    "Daisy",
    "Grace",
    "Ivy",
    "Hannah",
    "Lila",
    "Maya",
    "Chloe",
    "Tina",
    "Olivia",
    "Sophie",
    "Alice",
    "Clara",
    "Julia",
    "Ellie",
    "Megan",
    "Polly",
    "Rita",
    "Wendy",
    "Fiona",
    "Hazel",
    "Iris",
    "Jane",
    "Layla",
    "Mary",
    "Nina",
    "Penny",
    "Rose",
    "Sally",
    "Tara",
    "Violet",
    "Willow",
    "Abby",
    "Beth",
    "Cora",
    "Dora",
    "Eva",
    "Flora",
    "Gina",
    "Holly",
    "Jasmine",
    "Luna",
    "Mila",
]
BOYS = [
    "Tom",
    "Ben",
    "Max",
    "Sam",
    "Tim",
    "Jack",
    "Leo",
    "Finn",
    "Jake",
    "Noah",
    "Oliver",
    "Bob",
    "Joe",
    "Dan",
    "Eli",
    "Theo",
    "Kevin",
    "Luke",
    "Timmy",
    "Billy",
    "Henry",
    "Jim",
    "Alex",
    "Ryan",
    "Adam",
    "Carl",
    "David",
    "Ethan",
    "Frank",
    "George",
    "Harry",
    "Ian",
    "Jacob",
    "Kyle",
    "Liam",
    "Mark",
    "Nick",
    "Oscar",
    "Paul",
    "Quinn",
    "Simon",
    "Tony",
    "Victor",
    "Will",
    "Zack",
    "Arthur",
    "Bruno",
    "Caleb",
    "Dylan",
    "Evan",
    "Felix",
    "Gus",
    "Hugo",
    "Isaac",
    "Jonah",
    "Lucas",
    "Milo",
    "Owen",
    "Peter",
]
PET_NAMES = [
    "Spot",
    "Fluffy",
    "Buddy",
    "Coco",
    "Bella",
    "Pip",
    "Sunny",
    "Teddy",
    "Whiskers",
    "Ollie",
    "Benny",
    "Rex",
    "Lulu",
    "Tweety",
    "Hoppy",
    "Snowy",
    "Patch",
    "Ginger",
    "Bubbles",
    "Fuzzy",
    "Biscuit",
    "Pepper",
    "Shadow",
    "Muffin",
    "Peanut",
    "Ziggy",
    "Nibbles",
    "Pickles",
    "Waffles",
    "Sprinkles",
    "Dotty",
    "Rusty",
    "Button",
    "Pebble",
    "Misty",
    "Cookie",
    "Jelly",
    "Noodle",
    "Tiger",
]
# (kind, plural, sound verb in past tense)
ANIMALS = [
    ("dog", "dogs", "barked"),
    ("cat", "cats", "meowed"),
    ("bunny", "bunnies", "squeaked"),
    ("bird", "birds", "chirped"),
    ("frog", "frogs", "croaked"),
    ("bear", "bears", "growled"),
    ("duck", "ducks", "quacked"),
    ("mouse", "mice", "squeaked"),
    ("fox", "foxes", "yipped"),
    ("puppy", "puppies", "barked"),
    ("kitten", "kittens", "meowed"),
    ("owl", "owls", "hooted"),
    ("turtle", "turtles", "blinked"),
    ("squirrel", "squirrels", "chattered"),
    ("pig", "pigs", "oinked"),
    ("horse", "horses", "neighed"),
    ("sheep", "sheep", "baaed"),
    ("lion", "lions", "roared"),
    ("elephant", "elephants", "trumpeted"),
    ("monkey", "monkeys", "laughed"),
    ("deer", "deer", "sniffed"),
    ("goat", "goats", "bleated"),
    ("chicken", "chickens", "clucked"),
    ("cow", "cows", "mooed"),
    ("donkey", "donkeys", "brayed"),
    ("giraffe", "giraffes", "hummed"),
    ("zebra", "zebras", "snorted"),
    ("penguin", "penguins", "squawked"),
    ("dolphin", "dolphins", "clicked"),
    ("seal", "seals", "barked"),
    ("hedgehog", "hedgehogs", "sniffled"),
    ("raccoon", "raccoons", "chittered"),
    ("beaver", "beavers", "grunted"),
    ("snail", "snails", "peeked out"),
    ("hamster", "hamsters", "squeaked"),
    ("parrot", "parrots", "squawked"),
    ("goose", "geese", "honked"),
    ("wolf", "wolves", "howled"),
    ("tiger", "tigers", "roared"),
    ("kangaroo", "kangaroos", "hopped"),
    ("koala", "koalas", "yawned"),
    ("panda", "pandas", "yawned"),
    ("camel", "camels", "grunted"),
    ("crab", "crabs", "clicked"),
]
TRAITS = [
    "kind",
    "brave",
    "shy",
    "curious",
    "happy",
    "silly",
    "smart",
    "gentle",
    "playful",
    "friendly",
    "little",
    "cheerful",
    "busy",
    "clever",
    "quiet",
    "funny",
    "lively",
    "sleepy",
    "helpful",
    "honest",
    "polite",
    "careful",
    "bouncy",
    "bold",
    "sweet",
    "wise",
    "lucky",
    "caring",
    "patient",
    "tiny",
]
# (place, preposition, something you see there)
PLACES = [
    ("park", "at", "green grass and tall trees"),
    ("forest", "in", "big trees and soft moss"),
    ("beach", "at", "warm sand and blue water"),
    ("garden", "in", "pretty flowers and buzzing bees"),
    ("farm", "on", "a red barn and many animals"),
    ("school", "at", "a big yard and a swing"),
    ("lake", "by", "ducks swimming on the water"),
    ("hill", "on", "a view of the whole town"),
    ("zoo", "at", "animals big and small"),
    ("backyard", "in", "a sandbox and an old tree"),
    ("playground", "at", "slides and swings"),
    ("market", "at", "fruit and bread on every table"),
    ("river", "by", "fish jumping in the water"),
    ("meadow", "in", "butterflies and yellow flowers"),
    ("library", "at", "shelves full of books"),
    ("kitchen", "in", "the smell of fresh cookies"),
    ("town", "in", "little houses and a big clock"),
    ("jungle", "in", "vines and colorful birds"),
    ("pond", "by", "lily pads and little fish"),
    ("snowy hill", "on", "white snow everywhere"),
    ("castle", "at", "tall towers and a big gate"),
    ("cave", "in", "dark walls and dripping water"),
    ("mountain", "on", "rocks and a cold wind"),
    ("island", "on", "palm trees and white sand"),
    ("field", "in", "tall corn and a scarecrow"),
    ("orchard", "in", "rows of apple trees"),
    ("bakery", "at", "warm bread and sweet cakes"),
    ("toy store", "at", "shelves full of toys"),
    ("museum", "at", "old treasures behind glass"),
    ("station", "at", "trains coming and going"),
    ("harbor", "at", "boats bobbing on the water"),
    ("desert", "in", "sand dunes and a cactus"),
    ("swamp", "in", "frogs and tall reeds"),
    ("barn", "in", "hay and sleepy cows"),
    ("attic", "in", "old boxes and dusty toys"),
    ("treehouse", "in", "a rope ladder and a tiny window"),
    ("circus", "at", "clowns and a huge tent"),
    ("fair", "at", "a Ferris wheel and cotton candy"),
    ("village", "in", "cottages with red roofs"),
    ("valley", "in", "a stream and green hills"),
]
COLORS = [
    "red",
    "blue",
    "green",
    "yellow",
    "pink",
    "purple",
    "orange",
    "shiny",
    "big",
    "small",
    "soft",
    "new",
    "old",
    "sparkly",
    "striped",
    "tiny",
    "golden",
    "silver",
    "fluffy",
    "wooden",
    "bright",
    "huge",
    "round",
    "smooth",
    "bumpy",
    "colorful",
    "spotted",
    "glittery",
    "brown",
    "black",
    "white",
    "gray",
    "magic",
    "dusty",
    "heavy",
    "light",
    "favorite",
    "special",
    "funny",
    "beautiful",
]
# toys and treasures: (noun, is_plural)
OBJECTS = [
    ("ball", False),
    ("kite", False),
    ("teddy bear", False),
    ("toy car", False),
    ("doll", False),
    ("hat", False),
    ("book", False),
    ("drum", False),
    ("toy boat", False),
    ("box", False),
    ("shell", False),
    ("rock", False),
    ("balloon", False),
    ("crayons", True),
    ("blocks", True),
    ("scarf", False),
    ("bucket", False),
    ("necklace", False),
    ("robot", False),
    ("train", False),
    ("puzzle", False),
    ("umbrella", False),
    ("bike", False),
    ("wagon", False),
    ("flower", False),
    ("cup", False),
    ("ring", False),
    ("shoes", True),
    ("marbles", True),
    ("spoon", False),
    ("bell", False),
    ("map", False),
    ("feather", False),
    ("stick", False),
    ("jar", False),
    ("sock", False),
    ("lamp", False),
    ("clock", False),
    ("key", False),
    ("card", False),
    ("pencil", False),
    ("backpack", False),
    ("blanket", False),
    ("pillow", False),
    ("sled", False),
    ("skateboard", False),
    ("whistle", False),
    ("flashlight", False),
    ("basket", False),
    ("bottle", False),
    ("button", False),
    ("coin", False),
    ("crown", False),
    ("diary", False),
    ("drawing", False),
    ("mittens", True),
    ("helmet", False),
    ("jacket", False),
    ("ladder", False),
    ("mirror", False),
    ("notebook", False),
    ("paintbrush", False),
    ("piano", False),
    ("pinwheel", False),
    ("rope", False),
    ("ribbon", False),
    ("shovel", False),
    ("stickers", True),
    ("sweater", False),
    ("tent", False),
    ("trumpet", False),
    ("violin", False),
    ("watch", False),
    ("wand", False),
    ("toy plane", False),
    ("toy truck", False),
    ("rocket", False),
    ("bracelet", False),
    ("magnet", False),
    ("telescope", False),
    ("compass", False),
    ("lunchbox", False),
    ("piggy bank", False),
    ("puppet", False),
    ("guitar", False),
    ("scooter", False),
    ("glasses", True),
    ("boots", True),
    ("paints", True),
]
FOODS = [
    "apple",
    "cookie",
    "cake",
    "sandwich",
    "banana",
    "pie",
    "carrot",
    "cupcake",
    "pear",
    "muffin",
    "orange",
    "peach",
    "plum",
    "strawberry",
    "pancake",
    "waffle",
    "donut",
    "pizza",
    "bun",
    "pretzel",
    "cherry",
    "tomato",
    "cucumber",
    "watermelon",
    "lollipop",
    "bagel",
    "biscuit",
    "taco",
    "egg",
    "potato",
]
# (infinitive, past) activity phrases
ACTIVITIES = [
    ("play ball", "played ball"),
    ("run in the grass", "ran in the grass"),
    ("sing songs", "sang songs"),
    ("dance", "danced"),
    ("draw pictures", "drew pictures"),
    ("swim", "swam"),
    ("read books", "read books"),
    ("build towers", "built towers"),
    ("climb trees", "climbed trees"),
    ("jump in puddles", "jumped in puddles"),
    ("play hide and seek", "played hide and seek"),
    ("look at the stars", "looked at the stars"),
    ("pick flowers", "picked flowers"),
    ("bake cookies", "baked cookies"),
    ("paint", "painted"),
    ("ride a bike", "rode a bike"),
    ("fly kites", "flew kites"),
    ("dig in the sand", "dug in the sand"),
    ("splash in the river", "splashed in the river"),
    ("make sandcastles", "made sandcastles"),
    ("feed the ducks", "fed the ducks"),
    ("plant seeds", "planted seeds"),
    ("catch butterflies", "caught butterflies"),
    ("skip rope", "skipped rope"),
    ("roll down the hill", "rolled down the hill"),
    ("blow bubbles", "blew bubbles"),
    ("tell jokes", "told jokes"),
    ("skate on the ice", "skated on the ice"),
    ("hop like a frog", "hopped like a frog"),
    ("count the clouds", "counted the clouds"),
    ("collect shells", "collected shells"),
    ("play the drums", "played the drums"),
    ("make music", "made music"),
    ("write stories", "wrote stories"),
    ("visit grandma", "visited grandma"),
    ("help in the garden", "helped in the garden"),
    ("sail paper boats", "sailed paper boats"),
    ("watch the rain", "watched the rain"),
    ("play tag", "played tag"),
    ("swing high", "swung high"),
    ("throw snowballs", "threw snowballs"),
    ("make funny faces", "made funny faces"),
]
GOOD_FEELINGS = ["happy", "glad", "proud", "excited", "joyful", "thankful", "delighted", "cheerful", "calm"]
BAD_FEELINGS = [
    "sad",
    "upset",
    "worried",
    "scared",
    "grumpy",
    "lonely",
    "angry",
    "nervous",
    "frightened",
    "confused",
    "disappointed",
    "tired",
]
# A sentence of scenery, now and then, for a wider vocabulary.
SCENES = [
    "The leaves were orange and red.",
    "A rainbow shone over the hills.",
    "Little clouds floated across the sky.",
    "The grass was wet with morning dew.",
    "Bees buzzed around the sunflowers.",
    "A gentle breeze moved the branches.",
    "Snowflakes danced in the cold air.",
    "Birds were singing in the treetops.",
    "The moon was round and bright.",
    "Puddles shone like mirrors on the path.",
    "A squirrel ran up an oak tree with an acorn.",
    "Ladybugs crawled on the fence.",
    "The air smelled of rain and pine.",
    "Tiny mushrooms grew under the ferns.",
    "A butterfly landed on a daisy.",
    "The waves whispered on the shore.",
    "Thunder rumbled far away.",
    "Fireflies blinked in the evening.",
    "Pumpkins sat in a row by the gate.",
    "The stars twinkled above the roofs.",
    "A snail left a shiny trail on a stone.",
    "Dragonflies zipped over the water.",
    "The wind carried the smell of cinnamon.",
    "An old windmill turned slowly.",
    "Icicles hung from the roof like candles.",
]
OPENERS = [
    "Once upon a time,",
    "One day,",
    "One sunny morning,",
    "Long ago,",
    "One rainy day,",
    "One warm afternoon,",
    "Once,",
    "One cold winter day,",
    "One bright day,",
    "In a small town,",
]
SAID = ["said", "said", "said", "asked", "shouted", "whispered", "cried", "replied", "laughed", "called"]
ENDINGS = [
    "From that day on, {H} and {F} were best friends.",
    "They played together until the sun went down.",
    "{H} smiled. It was the best day ever.",
    "And they all lived happily ever after.",
    "That night, {H} went to bed with a big smile.",
    "{H} and {F} laughed and laughed.",
    '{He} hugged {F} and said, "Thank you. You are a good friend."',
    "Everyone was happy again.",
]
# The lesson of each plot (the plots are defined below).
MORALS = {
    "lost": ["{H} learned that friends help each other.", "{H} learned to take good care of {his} things."],
    "broken": ["{H} learned that broken things can often be fixed.", "{H} learned that saying sorry helps."],
    "share": ["{H} learned that sharing makes everyone happy.", "{H} learned that it is more fun to play together."],
    "fear": ["{H} learned to be brave, even when {he} was scared.", "{H} learned that trying is the first step."],
    "animal": [
        "{H} learned that being kind is the best thing of all.",
        "{H} learned that small friends need help too.",
    ],
    "wish": ["{H} learned that trying again is the way to do hard things.", "{H} learned that practice helps."],
}

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
INTROS = [
    [
        "{Opener} there was {a_kind} named {H}.",
        "{Opener} {a_kind} named {H} went out to play.",
        "{Opener} {H} was {a_kind} who loved to {act}.",
        "{Opener} {a_kind} called {H} woke up early.",
    ],
    [
        "{He} loved to {act} with {his} friend {F}, {a_fkind}.",
        "{His} best friend was {F}.",
        "{H} had a friend named {F}, who was {a_fkind}.",
        "{He} lived in a small house with {his} {P_low}.",
        "Every day, {H} liked to {act}.",
        "{He} had {a_obj} that {he} loved very much.",
    ],
]
SETTINGS = [
    "{He} went to the {place} with {F}. {Scene}",
    "{H} and {F} went to play {prep} the {place}.",
    "{Prep} the {place}, {H} saw {sight}.",
    "The sun was warm, and the sky was blue. {Scene}",
    "{H} and {F} walked to the {place}. They saw {sight}.",
]

PLOTS: dict[str, list[list[str]]] = {
    "lost": [
        ["{H} had {a_obj}. {He} took {it} everywhere.", "{H} brought {his} {obj} to the {place}."],
        SETTINGS,
        [
            "They played all morning. When it was time to go home, {H} could not find {his} {obj}.",
            "After a while, {H} looked down. {His} {obj} {was} gone!",
        ],
        ['"Oh no! Where is my {noun}?" {H} {said}. {He} felt very {bad}.', '{H} started to cry. "I lost my {noun}!"'],
        ['"Don\'t worry, I will help you look," said {F}.', '{F} {fsaid}, "Let\'s look for {it} together."'],
        [
            "They looked under the bench and behind a big tree. They looked in the tall grass.",
            "They looked high and low. They looked near the water and under the leaves.",
        ],
        [
            "At last, {F} saw something {prep} a bush. It was the {obj}!",
            "Then {H} heard {a_animal}. The {animal} had the {obj}! It was playing with {it}.",
            "Then they saw {it}, right where they had eaten {a_food}.",
        ],
        ['{H} was so {good}. "Thank you, {F}!" {he} said.', "{H} hugged {his} {noun} and smiled at {F}."],
        ["{Moral}", "{Ending}"],
    ],
    "broken": [
        ["{H} had {a_obj}. {It} {was} {his} favorite toy.", "{H} got {a_obj} from {his} {P_low}."],
        ["One day, {he} played with {it} {prep} the {place}.", "{He} showed {it} to {F} {prep} the {place}."],
        [
            "Then {F} pulled {it} too hard, and {it} broke.",
            "{H} dropped {it}, and {it} broke into two pieces.",
            "A big dog ran by and stepped on {it}. Crack!",
        ],
        ["{H} was very {bad}. {He} began to cry.", '"My {noun}!" {H} {said}. Tears rolled down {his} face.'],
        ['{F} felt bad too. "I am sorry," {fhe} said.', '{F} said, "Let\'s ask your {P_low} for help."'],
        [
            "They went home to {P}. {P} looked at the {noun} and smiled.",
            '{P} came and said, "I can fix {it}. We need some glue."',
        ],
        [
            "{P} used glue and tape. Soon the {noun} looked almost new.",
            "{P} worked very carefully. After a little while, the {noun} was fixed.",
        ],
        [
            '"Thank you, {P}!" {H} {said}. {He} felt {good} again.',
            "{H} gave {P} a big hug. Then {he} and {F} played with the {noun} together.",
        ],
        ["{Moral}", "{Ending}"],
    ],
    "share": [
        ["{H} had {a_obj}. {He} did not like to share {it}.", "{H} got {a_obj} for {his} birthday."],
        SETTINGS,
        ["{F} saw the {noun} and wanted to play with {it} too.", '{F} asked, "Can I play with your {noun}?"'],
        ['"No! It is mine!" {H} {said}.', '{H} held the {noun} close and said, "No, you can\'t."'],
        ["{F} was {bad}. {Fhe} sat down alone.", "{F} walked away. {Fhe} felt very {bad}."],
        [
            "{H} played alone, but it was not fun. {He} felt bad inside.",
            "Soon {H} saw that {F} was {bad}. {H} did not feel happy anymore.",
        ],
        [
            '{H} went to {F} and said, "I am sorry. Let\'s play together."',
            '{H} gave the {noun} to {F} and said, "You can have a turn."',
        ],
        ["{F} smiled. They took turns and laughed a lot.", "{F} was so {good}. They played all day."],
        ["{Moral}", "{Ending}"],
    ],
    "fear": [
        [
            "{H} was afraid of the dark.",
            "{H} was afraid of the big slide {prep} the {place}.",
            "{H} was scared of the deep water.",
            "{H} was scared of the loud thunder.",
        ],
        ["Every time {he} thought about it, {his} tummy felt funny.", "{He} did not want anyone to know."],
        ['One day, {F} said, "Come on, {H}! It will be fun!"', '{P} asked, "Why are you so quiet, {H}?"'],
        ['"I am scared," {H} {said} in a small voice.', '{H} shook {his} head. "I can\'t. I am too scared."'],
        [
            '{F} held {his} hand. "I will be right here with you," {fhe} said.',
            '{P} gave {H} a hug and said, "It is okay to be scared. You can try a little bit."',
        ],
        ["{H} took a deep breath. {He} tried, just a little.", "{H} counted to three. Then {he} was brave and tried."],
        ["It was not so bad! It was fun!", "{H} laughed. There was nothing to be afraid of."],
        ['{H} felt very {good}. "I did it!" {he} shouted.', '{F} clapped. "You were so brave!"'],
        ["{Moral}", "{Ending}"],
    ],
    "animal": [
        SETTINGS,
        [
            "Suddenly, {H} heard a sad sound. It was a little {animal}.",
            "Then {H} saw a small {animal}. The {animal} {sound} and looked scared.",
        ],
        [
            "The {animal} was stuck in a tree.",
            "The {animal} was stuck in the mud.",
            "The {animal} was caught in a fence.",
            "The {animal} could not find its mom.",
        ],
        ['"We have to help it," {H} {said}.', '{H} said, "Poor {animal}! Let\'s help it."'],
        ["{H} tried to help, but {he} was too small.", "{H} reached out, but {he} could not do it alone."],
        ["{F} came to help. Together, they were strong enough.", "{H} called {P}. {P} came and helped them."],
        [
            "At last, the {animal} was free! It jumped and {sound}.",
            "Soon the {animal} was safe. It licked {H} on the hand.",
        ],
        [
            "The {animal} was {good}. It followed {H} all the way home.",
            "{H} gave the {animal} a piece of {his} {food}, and the {animal} ate it all.",
        ],
        ["{Moral}", "{Ending}"],
    ],
    "wish": [
        ["{H} wanted to {act} more than anything.", "{H} had a big wish. {He} wanted to {act} like {F}."],
        ["{He} tried, but {he} could not do it.", "{He} tried once, twice, three times. Each time it went wrong."],
        ['{H} felt {bad}. "I will never do it," {he} {said}.', '{H} sat down and frowned. "It is too hard!"'],
        [
            '{F} came by. "Don\'t give up," {fhe} said. "I will show you."',
            '{P} said, "Everyone has to practice. Try again tomorrow."',
        ],
        ["So {H} practiced every day.", "{H} tried again, slowly and carefully."],
        ["One day, {he} did it! {He} could {act}!", "At last, it worked. {H} could {act} too!"],
        ['"Look at me!" {H} shouted. Everyone clapped.', "{H} felt so {good}. {He} smiled from ear to ear."],
        ["{Moral}", "{Ending}"],
    ],
    "weather": [
        [
            "{H} and {F} wanted to have a picnic {prep} the {place}.",
            "{H} planned a fun day {prep} the {place} with {F}.",
        ],
        ["They packed {a_food}, some juice and {a_obj}.", "{P} made them {a_food} to take along."],
        ["But then, dark clouds came. It started to rain.", "But the wind blew hard, and it began to rain."],
        ['"Oh no! Our day is ruined," {H} {said}. {He} felt {bad}.', "{H} looked out the window and sighed."],
        [
            '{P} had an idea. "Why don\'t you have a picnic inside?" '
            "So they put a blanket on the floor and ate {a_food}.",
            '{F} said, "We can still have fun. Let\'s jump in the puddles!" '
            "They put on boots and jumped in every puddle. Splash!",
            '{P} said, "Let\'s build a fort with pillows." They made a big fort and played games inside.',
        ],
        ["It was even more fun than they had planned.", "They laughed so much that they forgot about the rain."],
        ["{Ending}"],
    ],
    "warning": [
        ["{H} wanted to go to the {place} alone.", "{H} liked to play near the {place}."],
        ['{P} said, "Be careful, {H}. Do not go too far."', '"Stay close to me," {P} said.'],
        ["But {H} did not listen. {He} ran off to {act}.", "{H} did not listen. {He} thought {he} knew best."],
        ["Soon {H} was lost. {He} did not know the way home.", "{H} slipped and fell in the mud. {He} was all dirty."],
        ['{H} was {bad}. "{P}! Where are you?" {he} {said}.', "{H} began to cry. {He} wished {he} had listened."],
        ["{P} found {him} and picked {him} up.", "Then {H} heard {P} calling {his} name. {He} ran to {P}."],
        [
            '"I am sorry, {P}," {H} said. "I will listen next time."',
            '{P} hugged {him} and said, "I am glad you are safe."',
        ],
        ["{H} learned to listen to {his} {P_low}.", "{Ending}"],
    ],
    "gift": [
        ["It was {R}'s birthday soon.", "{H} wanted to make {R} happy."],
        ["{H} wanted to give a special gift, but {he} had no money.", "{H} thought and thought. What could {he} give?"],
        ["Then {he} had an idea. {He} would make a card!", "{He} decided to bake {a_food} all by {himself}."],
        ["{He} worked very hard. It was not easy.", "{He} used {his} best crayons and a lot of glitter."],
        ["When it was ready, {H} gave it with a big smile.", '{H} hid the gift behind {his} back. "Surprise!"'],
        ['"I love it! Thank you, {H}!" {R} said.', "{R} was so {good}. It was the best gift ever."],
        ["{H} felt warm inside. Giving was even better than getting.", "{Ending}"],
    ],
    "new_friend": [
        [
            "{Prep} the {place}, {H} saw a new {fkind}. It was {F}.",
            "One day, a new {fkind} named {F} came to the {place}.",
        ],
        ["{F} was sitting alone and looked {bad}.", "{F} did not know anyone. {Fhe} was very shy."],
        [
            '{H} walked over and said, "Hi! I am {H}. Do you want to play?"',
            '{H} smiled at {F} and asked, "Do you want to {act} with me?"',
        ],
        ['{F} smiled a little. "Yes, please," {fhe} said.', "{F} nodded and stood up."],
        [
            "They had so much fun. They {act_past} and laughed together.",
            "They {act_past} all afternoon. Then they shared {a_food}.",
        ],
        [
            'When it was time to go, {F} said, "Can we play again tomorrow?"',
            "{F} was not {bad} anymore. {Fhe} was {good}.",
        ],
        ['"Of course!" {H} {said}.', "{Ending}"],
    ],
}
PLOT_NAMES = list(PLOTS)


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
