"""WordNet's noun files read by scope.wordnet, and the concept rule, on a miniature WordNet
whose hierarchy the expectations below are read off by hand."""

import pytest

from scope.wordnet import WordNet, load
from tests.wordnet_util import EXCEPTIONS, MINI, write_wordnet


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    return WordNet(write_wordnet(tmp_path_factory.mktemp("wordnet"), MINI, EXCEPTIONS))


def test_the_files_are_read_into_senses_hypernyms_and_depths(wordnet):
    assert wordnet.senses["dog"] == [201, 210, 214] and wordnet.senses["paris"] == [205]
    assert wordnet.hypernyms[205] == [107]  # an instance hypernym (@i) leads up too
    assert wordnet.ancestors(201) == {201, 104, 103, 102, 101, 100}
    assert [wordnet.depth(s) for s in (100, 102, 104, 201, 112)] == [0, 2, 4, 5, 3]
    assert wordnet.below(103) == 7 and wordnet.below(201) == 0  # canine, feline, their 4 words and ox
    assert wordnet.name(101) == "physical entity"


def test_plurals_and_exceptions_reach_the_lemma(wordnet):
    assert wordnet.under("is") == frozenset()  # an exception to a lemma WordNet lacks
    assert wordnet.lemma("ox") is None  # letters and abbreviations are no words to a concept
    assert [wordnet.lemma(w) for w in ("Dogs", "foxes", "wolves", "Paris", "the", "3d")] == [
        "dog",
        "fox",
        "wolf",
        "paris",
        None,
        None,
    ]


def test_the_lowest_common_hypernym_of_enough_words(wordnet):
    canine = wordnet.concept(["dogs", "fox", "wolves", "the"])  # 3 of 4 distinct words: 75%
    assert (canine.name, canine.words, canine.share, canine.text) == (
        "canine",
        ("dogs", "fox", "wolves"),
        0.75,
        "canine (dogs, fox, wolves)",
    )
    # canine covers 2 of 5, fewer than 3 words: the lowest synset over 3 (60%) is animal
    assert wordnet.concept(["dog", "fox", "cat", "the", "quick"]).name == "animal"
    assert wordnet.concept(["dog", "fox", "cat", "the", "quick", "of"]) is None  # 3 of 6: under 60%
    # dog, Paris and France share only "object", 2 steps below entity: too generic
    assert wordnet.concept(["dog", "Paris", "France"]) is None
    assert wordnet.concept(["dog", "Paris", "France"], min_depth=2).name == "object"
    assert wordnet.concept(["dog", "fox", "cat"], max_below=5) is None  # animal has 7 synsets under it
    # dog's second sense (frump) is under utterance with capital and knock; its third sense does not count
    assert wordnet.concept(["dog", "capital", "knock"]).name == "utterance"
    assert wordnet.concept(["dog", "bridge", "bridge", "Bridge"], min_words=2, min_depth=2).name == "object"
    assert wordnet.concept([]) is None


def test_matches_follows_the_hyponyms(wordnet):
    canine = wordnet.concept(["dog", "fox", "wolf"])
    assert [wordnet.matches(canine, w) for w in ("wolves", "Dog", "cat", "the")] == [True, True, False, False]


def test_load_names_a_folder_without_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.noun, data.noun"):
        load(tmp_path)
