"""Find the SAE feature of a concrete concept by contrast: texts with the concept against texts without.

    python scripts/find_concept_feature.py [--sae demo] [--concepts sea whales ...] [--k 5] [--out ranking.json]

The first half of a Golden Gate experiment (the second is ``scripts/golden_gate.py``): for each
concept below, ``scope.search_features(model, sae, positive=..., negative=...)`` ranks every
feature by the AUROC of its per-text maximum, positive texts against negative ones (ties by the
difference of the means). The script prints the top candidates per concept (feature, AUROC,
mean difference, the share of positive texts it fires on, its max activation over the corpus
and its label when the SAE has labels) and writes the ranking as JSON (``--out``).

The texts (:data:`CONCEPTS`) were written for this project. Each concept has ten matched
pairs: the negative is the positive sentence with the concept swapped for something unrelated
("The old dog slept by the fire" / "The old man slept by the fire"), so a pair differs in the
concept and little else (length, register, grammar); the concept is named by varied words
(dog, puppy, hound, barked, spaniel), so a feature of one word ranks below a feature of the
concept. The concepts are ones the SAE's corpus teaches (Austen, Moby-Dick, dictionaries,
fortunes, Debian documentation). Every positive mentions its concept and no negative does, by
the keyword lists of ``scripts/golden_gate.py`` (``tests/test_golden_gate.py`` checks it). None
of these texts is a Golden Gate prompt (``data/golden_gate_prompts.txt``).

Cost: one forward pass to the SAE's hook over 200 short texts: 77 s wall (45 s CPU), model load
included, at nice 19 on a busy 2-core machine (the layer-6 ``demo-docs`` SAE).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from golden_gate import CONCEPT_KEYWORDS, feature_max_activation  # the sibling script (run as a script)

import scope
from scope._io import check_writable_file, write_atomically
from scope.hooks import sae_hook

COLUMNS = ["feature", "auroc", "mean_difference", "difference_per_max", "positive_fraction", "max_activation", "label"]
Pair = tuple[str, str]  # (with the concept, the same sentence without it)

CONCEPTS: dict[str, list[Pair]] = {
    "dogs": [
        ("The old dog slept by the fire all evening.", "The old man slept by the fire all evening."),
        ("Every morning she took the puppy for a walk in the park.",
         "Every morning she took the children for a walk in the park."),
        ("The hounds ran across the field after the fox.", "The boys ran across the field after the ball."),
        ("Our neighbour's dog barked at the postman again.", "Our neighbour's son shouted at the postman again."),
        ("He bought a lead and a bowl for his new spaniel.", "He bought a pen and a notebook for his new job."),
        ("The puppies tumbled over each other on the rug.", "The toddlers tumbled over each other on the rug."),
        ("A stray dog followed us home and wagged its tail at the door.",
         "A stranger followed us home and knocked at the door."),
        ("The terrier dug a hole under the fence to chase a rabbit.",
         "The gardener dug a hole under the fence to plant a tree."),
        ("She trained her dogs to sit, stay and fetch the stick.",
         "She trained her students to read, write and count the numbers."),
        ("The shepherd whistled, and the dog gathered the sheep.",
         "The shepherd whistled, and the boy gathered the sheep."),
    ],
    "sea": [
        ("The ship sailed out of the harbour into the open sea.",
         "The train pulled out of the station into the open country."),
        ("Waves broke on the shore all night long.", "Cars passed on the road all night long."),
        ("We spent the summer at the seaside, swimming in the ocean every day.",
         "We spent the summer in the city, walking in the park every day."),
        ("The sailors watched the tide come in over the rocks.",
         "The workers watched the crowd come in through the gates."),
        ("The ocean was calm and quiet in the early morning.", "The office was calm and quiet in the early morning."),
        ("Salt spray from the sea blew across the deck.", "Dust from the road blew across the yard."),
        ("He had been at sea for three years before he saw land again.",
         "He had been at school for three years before he saw home again."),
        ("The beach was empty except for a few shells and seaweed.",
         "The hall was empty except for a few chairs and tables."),
        ("A gale at sea drove the fishing boats back to port.",
         "A strike at the factory drove the workers back to their homes."),
        ("The navy sent three ships across the ocean.", "The company sent three managers across the country."),
    ],
    "whales": [
        ("The whale rose to the surface and blew a jet of spray.",
         "The diver rose to the surface and took a deep breath."),
        ("Captain Ahab swore to hunt the white whale to the ends of the earth.",
         "Captain Smith swore to find the lost map to the ends of the earth."),
        ("The harpooneer stood in the bow with his harpoon raised.",
         "The speaker stood on the stage with his notes raised."),
        ("Whalers boiled the blubber down into oil on deck.", "Workers boiled the sugar down into syrup in the shed."),
        ("A sperm whale can dive more than a mile below the surface.",
         "A small submarine can dive more than a mile below the surface."),
        ("The whaling ship was three years out of Nantucket.", "The merchant ship was three years out of Boston."),
        ("From the masthead came the cry: there she blows, a whale!",
         "From the crowd came the cry: there he goes, the winner!"),
        ("The leviathan thrashed its great tail and vanished below.",
         "The machine rattled its great wheels and stopped at last."),
        ("Moby Dick was the most feared whale in all the Pacific.",
         "Black Bart was the most feared pirate in all the Pacific."),
        ("Herds of whales were seen migrating south for the winter.",
         "Flocks of geese were seen migrating south for the winter."),
    ],
    "food": [
        ("She cooked a large pot of soup for dinner.", "She wrote a long letter to her sister."),
        ("The bread was still warm when it came out of the oven.",
         "The engine was still warm when it came into the garage."),
        ("We had eggs and toast for breakfast before leaving.", "We had a short talk in the hall before leaving."),
        ("This recipe needs two cups of flour and a pinch of salt.",
         "This form needs two signatures and a date at the bottom."),
        ("The kitchen smelled of roast meat and onions.", "The library smelled of old paper and dust."),
        ("He ate his supper in silence and went to bed.", "He read his paper in silence and went to bed."),
        ("Mix the butter and sugar, then bake the cake for forty minutes.",
         "Mix the paint and water, then brush the wall for forty minutes."),
        ("The restaurant serves delicious fresh fish and vegetables.", "The shop sells cheap new shoes and jackets."),
        ("Cheese, fruit and cold meat were laid out on the table.",
         "Books, papers and old letters were laid out on the table."),
        ("Lunch was a simple meal of rice and beans.", "The meeting was a simple affair of speeches and votes."),
    ],
    "colours": [
        ("She wore a bright red dress to the party.", "She wore a long formal dress to the party."),
        ("The walls were painted pale blue and yellow.", "The walls were covered with old posters and maps."),
        ("His favourite colour has always been green.", "His favourite subject has always been history."),
        ("The leaves turned orange and brown in the autumn.", "The days turned short and cold in the autumn."),
        ("A purple and crimson glow filled the evening sky.", "A low and steady hum filled the evening air."),
        ("The children coloured the picture with bright pink and violet crayons.",
         "The children finished the puzzle with quick and careful hands."),
        ("Mix blue and yellow paint to make green.", "Add the first and second numbers to get the total."),
        ("The flag is scarlet with a gold star in the middle.", "The flag is square with a small star in the middle."),
        ("Her eyes were a deep shade of grey.", "Her voice was a deep kind of whisper."),
        ("The sunset painted the hills red and orange.", "The evening made the hills quiet and still."),
    ],
    "horses": [
        ("He saddled his horse and rode to the next town.", "He packed his bag and walked to the next town."),
        ("The mare and her foal grazed in the meadow.", "The farmer and his son worked in the meadow."),
        ("She has been riding since she was a little girl.", "She has been singing since she was a little girl."),
        ("The horses galloped across the field at full speed.", "The runners raced across the field at full speed."),
        ("A carriage and four horses waited at the door.", "A car and two drivers waited at the door."),
        ("The stable boy brushed the pony and cleaned its hooves.",
         "The office boy swept the floor and cleaned the windows."),
        ("Mr. Darcy's horse was the finest in the county.", "Mr. Darcy's library was the finest in the county."),
        ("The rider pulled on the bridle and the stallion stopped.",
         "The driver pulled on the brake and the lorry stopped."),
        ("They rode out at dawn to inspect the farms.", "They set out at dawn to inspect the farms."),
        ("The cavalry charged on horseback down the hill.", "The soldiers charged on foot down the hill."),
    ],
    "weather": [
        ("It rained all day, so we stayed indoors.", "It was a holiday, so we stayed indoors."),
        ("A storm is coming from the west tonight.", "A visitor is coming from the west tonight."),
        ("The wind blew the leaves off the trees.", "The children shook the apples off the trees."),
        ("Heavy snow closed the roads for a week.", "Heavy traffic closed the roads for a week."),
        ("The weather forecast says it will be sunny tomorrow.", "The train timetable says it will be late tomorrow."),
        ("Dark clouds gathered and thunder rolled over the hills.",
         "Tired walkers gathered and voices rolled over the hills."),
        ("Take an umbrella; the rain will not stop before evening.",
         "Take a book; the meeting will not stop before evening."),
        ("A thick fog lay over the town in the morning.", "A thick silence lay over the town in the morning."),
        ("It was a cold, windy and wet afternoon in November.",
         "It was a long, busy and tiring afternoon in November."),
        ("Lightning struck the old tree during the night.", "Workmen cut down the old tree during the night."),
    ],
    "money": [
        ("He has an income of ten thousand pounds a year.", "He has a house of ten rooms in the country."),
        ("She saved every penny she earned.", "She kept every letter she received."),
        ("The bank refused to lend them any more money.", "The school refused to give them any more time."),
        ("A young man of large fortune has taken the house.", "A young man of good family has taken the house."),
        ("They paid for the tickets in cash.", "They asked for the tickets at the door."),
        ("The company's debts grew every year.", "The company's staff grew every year."),
        ("He counted the coins and put them in his pocket.", "He counted the keys and put them in his pocket."),
        ("She is rich enough to buy the whole street.", "She is tall enough to reach the top shelf."),
        ("Her salary barely covers the rent.", "Her garden barely covers the yard."),
        ("Five dollars and a few shillings were all he had left.",
         "Five minutes and a few words were all he had left."),
    ],
    "france": [
        ("She spent a year studying in Paris.", "She spent a year studying in Vienna."),
        ("The French army crossed the river at dawn.", "The Austrian army crossed the river at dawn."),
        ("France is famous for its castles and old towns.", "Austria is famous for its castles and old towns."),
        ("He speaks French fluently.", "He speaks German fluently."),
        ("The Eiffel Tower stands in the centre of Paris.", "The Brandenburg Gate stands in the centre of Berlin."),
        ("A Frenchman opened a small shop on our street.", "A Dutchman opened a small shop on our street."),
        ("We drove through Normandy and Provence last summer.", "We drove through Bavaria and Tyrol last summer."),
        ("The revolution in France changed Europe forever.", "The revolution in Russia changed Europe forever."),
        ("Parisian streets are full of students and artists.", "Berlin streets are full of students and artists."),
        ("The letter was written in French and signed in Lyon.",
         "The letter was written in Italian and signed in Milan."),
    ],
    "church": [
        ("On Sunday the whole family went to church.", "On Sunday the whole family went to the market."),
        ("She knelt down and said a prayer.", "She sat down and read a book."),
        ("The clergyman preached a long sermon about charity.", "The professor gave a long lecture about economics."),
        ("Thank God you are safe!", "Thank goodness you are safe!"),
        ("The bishop blessed the new chapel.", "The mayor opened the new library."),
        ("They prayed for peace during the long war.", "They hoped for peace during the long war."),
        ("The priest read from the Bible every morning.", "The teacher read from the newspaper every morning."),
        ("In the beginning God created the heaven and the earth.",
         "In the beginning the engineers designed the bridge and the road."),
        ("Mr. Collins, the parson, spoke of his patroness at length.",
         "Mr. Collins, the lawyer, spoke of his client at length."),
        ("The old church bells rang across the valley.", "The old factory whistle rang across the valley."),
    ],
}  # fmt: skip


def texts_of(concept: str) -> tuple[list[str], list[str]]:
    """(positive texts, negative texts) of one concept."""
    pairs = CONCEPTS[concept]
    return [p for p, _ in pairs], [n for _, n in pairs]


def rank_concept(model: Any, sae: Any, concept: str, k: int = 5, batch_size: int = 32) -> pd.DataFrame:
    """The ``k`` best candidates for one concept: ``scope.search_features``' contrastive table plus
    each feature's max activation over the corpus (NaN when the SAE records none) and the mean
    difference in multiples of it (comparable across features)."""
    positive, negative = texts_of(concept)
    found = scope.search_features(model, sae, positive=positive, negative=negative, k=k, batch_size=batch_size)
    peaks = [feature_max_activation(sae, int(f)) for f in found["feature"]]
    found["max_activation"] = peaks
    found["difference_per_max"] = [d / m if m else math.nan for d, m in zip(found["mean_difference"], peaks)]
    return found[COLUMNS]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", default="demo", help="SAE spec for scope.load_sae (default: demo)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--concepts", nargs="+", choices=sorted(CONCEPTS), default=list(CONCEPTS))
    parser.add_argument("--k", type=int, default=5, help="candidates per concept")
    parser.add_argument("--out", default=None, help="JSON file for the ranking (default: print only)")
    args = parser.parse_args(argv)
    if args.out:
        check_writable_file(args.out, "--out")

    sae = scope.load_sae(args.sae, device="cpu")
    model = scope.load_model(args.model, device="cpu")
    result: dict[str, Any] = {"model": args.model, "sae": args.sae, "hook": sae_hook(sae), "concepts": {}}
    for concept in args.concepts:
        table = rank_concept(model, sae, concept, k=args.k)
        with pd.option_context("display.width", 220, "display.max_colwidth", 70, "display.precision", 3):
            print(f"\n== {concept} ({len(CONCEPTS[concept])} pairs)\n{table.to_string(index=False)}")
        result["concepts"][concept] = {
            "keywords": CONCEPT_KEYWORDS[concept],
            "pairs": [list(pair) for pair in CONCEPTS[concept]],
            "candidates": [
                {name: (None if isinstance(v, float) and math.isnan(v) else v) for name, v in row.items()}
                for row in table.astype(object).to_dict("records")
            ],
        }
    if args.out:
        text = json.dumps(result, indent=1, ensure_ascii=False, default=float) + "\n"
        write_atomically(args.out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
