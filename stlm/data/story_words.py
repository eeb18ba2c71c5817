"""The words of the built-in corpus (generated.py): names, animals, places, objects, feelings, phrasings."""

# word lists read best as paragraphs
# fmt: off

GIRLS = ["Lily", "Mia", "Sue", "Anna", "Lucy", "Emma", "Zoe", "Ella", "Rosie", "Amy", "Kate", "Nora",
         "Ruby", "Sara", "Jenny", "Molly", "Daisy", "Grace", "Ivy", "Hannah", "Lila", "Maya", "Chloe", "Tina",
         "Olivia", "Sophie", "Alice", "Clara", "Julia", "Ellie", "Megan", "Polly", "Rita", "Wendy", "Fiona",
         "Hazel", "Iris", "Jane", "Layla", "Mary", "Nina", "Penny", "Rose", "Sally", "Tara", "Violet",
         "Willow", "Abby", "Beth", "Cora", "Dora", "Eva", "Flora", "Gina", "Holly", "Jasmine", "Luna", "Mila"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Finn", "Jake", "Noah", "Oliver", "Bob",
        "Joe", "Dan", "Eli", "Theo", "Kevin", "Luke", "Timmy", "Billy", "Henry", "Jim", "Alex", "Ryan",
        "Adam", "Carl", "David", "Ethan", "Frank", "George", "Harry", "Ian", "Jacob", "Kyle", "Liam", "Mark",
        "Nick", "Oscar", "Paul", "Quinn", "Simon", "Tony", "Victor", "Will", "Zack", "Arthur", "Bruno",
        "Caleb", "Dylan", "Evan", "Felix", "Gus", "Hugo", "Isaac", "Jonah", "Lucas", "Milo", "Owen", "Peter"]
PET_NAMES = ["Spot", "Fluffy", "Buddy", "Coco", "Bella", "Pip", "Sunny", "Teddy", "Whiskers", "Ollie",
             "Benny", "Rex", "Lulu", "Tweety", "Hoppy", "Snowy", "Patch", "Ginger", "Bubbles", "Fuzzy",
             "Biscuit", "Pepper", "Shadow", "Muffin", "Peanut", "Ziggy", "Nibbles", "Pickles", "Waffles",
             "Sprinkles", "Dotty", "Rusty", "Button", "Pebble", "Misty", "Cookie", "Jelly", "Noodle", "Tiger"]
# (kind, plural, sound verb in past tense)
ANIMALS = [("dog", "dogs", "barked"), ("cat", "cats", "meowed"), ("bunny", "bunnies", "squeaked"),
           ("bird", "birds", "chirped"), ("frog", "frogs", "croaked"), ("bear", "bears", "growled"),
           ("duck", "ducks", "quacked"), ("mouse", "mice", "squeaked"), ("fox", "foxes", "yipped"),
           ("puppy", "puppies", "barked"), ("kitten", "kittens", "meowed"), ("owl", "owls", "hooted"),
           ("turtle", "turtles", "blinked"), ("squirrel", "squirrels", "chattered"), ("pig", "pigs", "oinked"),
           ("horse", "horses", "neighed"), ("sheep", "sheep", "baaed"), ("lion", "lions", "roared"),
           ("elephant", "elephants", "trumpeted"), ("monkey", "monkeys", "laughed"), ("deer", "deer", "sniffed"),
           ("goat", "goats", "bleated"), ("chicken", "chickens", "clucked"), ("cow", "cows", "mooed"),
           ("donkey", "donkeys", "brayed"), ("giraffe", "giraffes", "hummed"), ("zebra", "zebras", "snorted"),
           ("penguin", "penguins", "squawked"), ("dolphin", "dolphins", "clicked"), ("seal", "seals", "barked"),
           ("hedgehog", "hedgehogs", "sniffled"), ("raccoon", "raccoons", "chittered"),
           ("beaver", "beavers", "grunted"), ("snail", "snails", "peeked out"), ("hamster", "hamsters", "squeaked"),
           ("parrot", "parrots", "squawked"), ("goose", "geese", "honked"), ("wolf", "wolves", "howled"),
           ("tiger", "tigers", "roared"), ("kangaroo", "kangaroos", "hopped"), ("koala", "koalas", "yawned"),
           ("panda", "pandas", "yawned"), ("camel", "camels", "grunted"), ("crab", "crabs", "clicked")]
TRAITS = ["kind", "brave", "shy", "curious", "happy", "silly", "smart", "gentle", "playful", "friendly",
          "little", "cheerful", "busy", "clever", "quiet", "funny", "lively", "sleepy", "helpful", "honest",
          "polite", "careful", "bouncy", "bold", "sweet", "wise", "lucky", "caring", "patient", "tiny"]
# (place, preposition, something you see there)
PLACES = [("park", "at", "green grass and tall trees"), ("forest", "in", "big trees and soft moss"),
          ("beach", "at", "warm sand and blue water"), ("garden", "in", "pretty flowers and buzzing bees"),
          ("farm", "on", "a red barn and many animals"), ("school", "at", "a big yard and a swing"),
          ("lake", "by", "ducks swimming on the water"), ("hill", "on", "a view of the whole town"),
          ("zoo", "at", "animals big and small"), ("backyard", "in", "a sandbox and an old tree"),
          ("playground", "at", "slides and swings"), ("market", "at", "fruit and bread on every table"),
          ("river", "by", "fish jumping in the water"), ("meadow", "in", "butterflies and yellow flowers"),
          ("library", "at", "shelves full of books"), ("kitchen", "in", "the smell of fresh cookies"),
          ("town", "in", "little houses and a big clock"), ("jungle", "in", "vines and colorful birds"),
          ("pond", "by", "lily pads and little fish"), ("snowy hill", "on", "white snow everywhere"),
          ("castle", "at", "tall towers and a big gate"), ("cave", "in", "dark walls and dripping water"),
          ("mountain", "on", "rocks and a cold wind"), ("island", "on", "palm trees and white sand"),
          ("field", "in", "tall corn and a scarecrow"), ("orchard", "in", "rows of apple trees"),
          ("bakery", "at", "warm bread and sweet cakes"), ("toy store", "at", "shelves full of toys"),
          ("museum", "at", "old treasures behind glass"), ("station", "at", "trains coming and going"),
          ("harbor", "at", "boats bobbing on the water"), ("desert", "in", "sand dunes and a cactus"),
          ("swamp", "in", "frogs and tall reeds"), ("barn", "in", "hay and sleepy cows"),
          ("attic", "in", "old boxes and dusty toys"), ("treehouse", "in", "a rope ladder and a tiny window"),
          ("circus", "at", "clowns and a huge tent"), ("fair", "at", "a Ferris wheel and cotton candy"),
          ("village", "in", "cottages with red roofs"), ("valley", "in", "a stream and green hills")]
COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "big", "small",
          "soft", "new", "old", "sparkly", "striped", "tiny", "golden", "silver", "fluffy", "wooden", "bright",
          "huge", "round", "smooth", "bumpy", "colorful", "spotted", "glittery", "brown", "black", "white",
          "gray", "magic", "dusty", "heavy", "light", "favorite", "special", "funny", "beautiful"]
# toys and treasures: (noun, is_plural)
OBJECTS = [("ball", False), ("kite", False), ("teddy bear", False), ("toy car", False), ("doll", False),
           ("hat", False), ("book", False), ("drum", False), ("toy boat", False), ("box", False),
           ("shell", False), ("rock", False), ("balloon", False), ("crayons", True), ("blocks", True),
           ("scarf", False), ("bucket", False), ("necklace", False), ("robot", False), ("train", False),
           ("puzzle", False), ("umbrella", False), ("bike", False), ("wagon", False), ("flower", False),
           ("cup", False), ("ring", False), ("shoes", True), ("marbles", True), ("spoon", False),
           ("bell", False), ("map", False), ("feather", False), ("stick", False), ("jar", False),
           ("sock", False), ("lamp", False), ("clock", False), ("key", False), ("card", False),
           ("pencil", False), ("backpack", False), ("blanket", False), ("pillow", False), ("sled", False),
           ("skateboard", False), ("whistle", False), ("flashlight", False), ("basket", False),
           ("bottle", False), ("button", False), ("coin", False), ("crown", False), ("diary", False),
           ("drawing", False), ("mittens", True), ("helmet", False), ("jacket", False), ("ladder", False),
           ("mirror", False), ("notebook", False), ("paintbrush", False), ("piano", False), ("pinwheel", False),
           ("rope", False), ("ribbon", False), ("shovel", False), ("stickers", True), ("sweater", False),
           ("tent", False), ("trumpet", False), ("violin", False), ("watch", False), ("wand", False),
           ("toy plane", False), ("toy truck", False), ("rocket", False), ("bracelet", False), ("magnet", False),
           ("telescope", False), ("compass", False), ("lunchbox", False), ("piggy bank", False), ("puppet", False),
           ("guitar", False), ("scooter", False), ("glasses", True), ("boots", True), ("paints", True)]
FOODS = ["apple", "cookie", "cake", "sandwich", "banana", "pie", "carrot", "cupcake", "pear", "muffin",
         "orange", "peach", "plum", "strawberry", "pancake", "waffle", "donut", "pizza", "bun", "pretzel",
         "cherry", "tomato", "cucumber", "watermelon", "lollipop", "bagel", "biscuit", "taco", "egg", "potato"]
# (infinitive, past) activity phrases
ACTIVITIES = [("play ball", "played ball"), ("run in the grass", "ran in the grass"),
              ("sing songs", "sang songs"), ("dance", "danced"), ("draw pictures", "drew pictures"),
              ("swim", "swam"), ("read books", "read books"), ("build towers", "built towers"),
              ("climb trees", "climbed trees"), ("jump in puddles", "jumped in puddles"),
              ("play hide and seek", "played hide and seek"), ("look at the stars", "looked at the stars"),
              ("pick flowers", "picked flowers"), ("bake cookies", "baked cookies"), ("paint", "painted"),
              ("ride a bike", "rode a bike"), ("fly kites", "flew kites"), ("dig in the sand", "dug in the sand"),
              ("splash in the river", "splashed in the river"), ("make sandcastles", "made sandcastles"),
              ("feed the ducks", "fed the ducks"), ("plant seeds", "planted seeds"),
              ("catch butterflies", "caught butterflies"), ("skip rope", "skipped rope"),
              ("roll down the hill", "rolled down the hill"), ("blow bubbles", "blew bubbles"),
              ("tell jokes", "told jokes"), ("skate on the ice", "skated on the ice"),
              ("hop like a frog", "hopped like a frog"), ("count the clouds", "counted the clouds"),
              ("collect shells", "collected shells"), ("play the drums", "played the drums"),
              ("make music", "made music"), ("write stories", "wrote stories"), ("visit grandma", "visited grandma"),
              ("help in the garden", "helped in the garden"), ("sail paper boats", "sailed paper boats"),
              ("watch the rain", "watched the rain"), ("play tag", "played tag"), ("swing high", "swung high"),
              ("throw snowballs", "threw snowballs"), ("make funny faces", "made funny faces")]
GOOD_FEELINGS = ["happy", "glad", "proud", "excited", "joyful", "thankful", "delighted", "cheerful", "calm"]
BAD_FEELINGS = ["sad", "upset", "worried", "scared", "grumpy", "lonely", "angry", "nervous", "frightened",
                "confused", "disappointed", "tired"]
# A sentence of scenery, now and then, for a wider vocabulary.
SCENES = ["The leaves were orange and red.", "A rainbow shone over the hills.",
          "Little clouds floated across the sky.",
          "The grass was wet with morning dew.", "Bees buzzed around the sunflowers.",
          "A gentle breeze moved the branches.", "Snowflakes danced in the cold air.",
          "Birds were singing in the treetops.", "The moon was round and bright.",
          "Puddles shone like mirrors on the path.", "A squirrel ran up an oak tree with an acorn.",
          "Ladybugs crawled on the fence.", "The air smelled of rain and pine.",
          "Tiny mushrooms grew under the ferns.", "A butterfly landed on a daisy.",
          "The waves whispered on the shore.", "Thunder rumbled far away.",
          "Fireflies blinked in the evening.", "Pumpkins sat in a row by the gate.",
          "The stars twinkled above the roofs.", "A snail left a shiny trail on a stone.",
          "Dragonflies zipped over the water.", "The wind carried the smell of cinnamon.",
          "An old windmill turned slowly.", "Icicles hung from the roof like candles."]
OPENERS = ["Once upon a time,", "One day,", "One sunny morning,", "Long ago,", "One rainy day,",
           "One warm afternoon,", "Once,", "One cold winter day,", "One bright day,", "In a small town,"]
SAID = ["said", "said", "said", "asked", "shouted", "whispered", "cried", "replied", "laughed", "called"]
ENDINGS = ["From that day on, {H} and {F} were best friends.",
           "They played together until the sun went down.",
           "{H} smiled. It was the best day ever.",
           "And they all lived happily ever after.",
           "That night, {H} went to bed with a big smile.",
           "{H} and {F} laughed and laughed.",
           "{He} hugged {F} and said, \"Thank you. You are a good friend.\"",
           "Everyone was happy again."]
# The lesson of each plot (the plots are defined below).
MORALS = {
    "lost": ["{H} learned that friends help each other.", "{H} learned to take good care of {his} things."],
    "broken": ["{H} learned that broken things can often be fixed.", "{H} learned that saying sorry helps."],
    "share": ["{H} learned that sharing makes everyone happy.", "{H} learned that it is more fun to play together."],
    "fear": ["{H} learned to be brave, even when {he} was scared.", "{H} learned that trying is the first step."],
    "animal": ["{H} learned that being kind is the best thing of all.",
               "{H} learned that small friends need help too."],
    "wish": ["{H} learned that trying again is the way to do hard things.", "{H} learned that practice helps."],
}

# fmt: on
