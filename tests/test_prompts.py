"""Shared prompt builders against METHOD.md 3.3/3.4: structure, variant counts, probabilities, rng use."""
import random
import re
from collections import Counter

import pytest

from coser import prompts as P

OTHERS = {"Ann": "Ann's own profile", "Bob": "Bob is tall.", "Cy": "Cy is loud."}


def build(rng, **kw):
    args = dict(book_name="The Salt Lamp", character="Ann", character_profile="Ann keeps the lamp.",
                background="PLOT-SUMMARY", scenario="A stormy night.", motivation="I want the truth.")
    args.update(kw)
    return P.get_character_prompt(rng=rng, **args)


def style_of(prompt):
    second = prompt.split("\n\n")[1]
    head = second.split("\n")[0]
    for mark in "=#*":
        if head.startswith(mark):
            return mark
    return "natural"


def test_constants():
    assert (P.ENVIRONMENT, P.NSP, P.END_CHAT) == ("Environment", "NSP", "<END CHAT>")
    assert P.CONVERSATION_START == "===Conversation Start===\n\n"
    assert len(P.OPENERS) == 20 and len({o.template for o in P.OPENERS}) == 20
    assert [len(v) for v in (P.NATURAL_PROFILE, P.NATURAL_SCENARIO_ONLY, P.NATURAL_SCENARIO_WITH_PLOT,
                             P.NATURAL_OTHERS, P.NATURAL_THOUGHTS)] == [5, 4, 4, 3, 5]
    assert [len(v) for v in (P.TITLES_PROFILE, P.TITLES_PLOT, P.TITLES_SCENARIO, P.TITLES_OTHERS,
                             P.TITLES_THOUGHTS, P.TITLES_REQUIREMENTS)] == [3, 4, 3, 3, 4, 2]
    assert {k: len(v) for k, v in P.DECORATORS.items()} == {"=": 3, "#": 4, "*": 3}
    assert len(P.ENVIRONMENT_ROLES) == 4
    assert len(P.OTHER_PROFILE_SEPARATORS) == 5 and "" in P.OTHER_PROFILE_SEPARATORS


def test_output_formats():
    assert "[" not in P.output_format(True) and "(" in P.output_format(True)
    assert "[" in P.output_format(False) and "(" in P.output_format(False)
    # The example is only for prompts with thoughts.
    assert P.output_format(True, add_output_example=True) == P.OUTPUT_FORMAT_THOUGHTLESS
    assert P.output_format(False, True).startswith(P.OUTPUT_FORMAT_THOUGHTFUL)
    assert P.output_format(False, True) != P.OUTPUT_FORMAT_THOUGHTFUL


def test_fixed_template_exact_layout():
    rng = random.Random(5)
    sep = random.Random(5).choice(P.OTHER_PROFILE_SEPARATORS)
    out = build(rng, fixed_template=True, other_character_profiles=OTHERS, add_rag=True,
                add_output_example=True, exclude_plot_summary=True)
    block = f"{sep}Bob: Bob is tall.\n\n{sep}Cy: Cy is loud.\n\n"
    expected = (P.FIXED_OPENING.substitute(character="Ann", book_name="The Salt Lamp")
                + "===Ann's Profile===\nAnn keeps the lamp.\n\n"
                + "===Current Scenario===\nA stormy night.\n\n"
                + "===Information about the other Characters===\n" + block + "\n\n"
                + "===Your Inner Thoughts===\nI want the truth.\n\n"
                + "\n\n"
                + "===Relevant Background Information==={retrieved_knowledge}\n\n"
                + "===Requirements===\n" + P.OUTPUT_FORMAT_WITH_EXAMPLE + "\n\n")
    assert out == expected
    assert "PLOT-SUMMARY" not in out
    # Exactly one draw (the separator) was consumed, as the reference's fixed template does.
    ref = random.Random(5)
    ref.choice(P.OTHER_PROFILE_SEPARATORS)
    assert rng.random() == ref.random()


def test_fixed_template_optional_sections_and_no_draw_without_others():
    rng = random.Random(1)
    out = build(rng, fixed_template=True, motivation="", thoughtless=True)
    assert "===Information about" not in out and "===Your Inner Thoughts===" not in out
    assert "{retrieved_knowledge}" not in out
    assert out.endswith("===Requirements===\n" + P.OUTPUT_FORMAT_THOUGHTLESS + "\n\n")
    assert rng.random() == random.Random(1).random()
    # Only the speaker in the dict: separator drawn, block empty, no section.
    rng = random.Random(1)
    out = build(rng, fixed_template=True, other_character_profiles={"Ann": "x"})
    assert "===Information about" not in out
    assert rng.random() != random.Random(1).random()


def test_randomized_is_deterministic_and_leaves_global_random_alone():
    random.seed(123)
    state = random.getstate()
    a = [build(random.Random(9), thoughtless=t, other_character_profiles=OTHERS) for t in (True, False)]
    b = [build(random.Random(9), thoughtless=t, other_character_profiles=OTHERS) for t in (True, False)]
    assert a == b
    assert random.getstate() == state


def test_randomized_distributions():
    rng = random.Random(2024)
    n = 4000
    styles = Counter()
    openers = set()
    with_plot = 0
    for _ in range(n):
        out = build(rng, other_character_profiles=OTHERS)
        styles[style_of(out)] += 1
        openers.add(out.split("\n\n")[0])
        with_plot += "PLOT-SUMMARY" in out
        assert "$" not in out
        assert "Bob: Bob is tall." in out and "Ann's own profile" not in out
        assert "I want the truth." in out and P.OUTPUT_FORMAT_THOUGHTFUL in out
    for style, p in zip(P.STYLES, P.STYLE_WEIGHTS):
        assert abs(styles[style] / n - p) < 0.03, styles
    assert len(openers) == 20
    # Natural: plot with p 0.5; decorated: plot section with p 0.5 -> 0.5 overall.
    assert abs(with_plot / n - 0.5) < 0.04


def test_thoughtless_requirement_omitted_half_the_time_and_exclude_plot_summary():
    rng = random.Random(7)
    n = 2000
    have = sum(P.OUTPUT_FORMAT_THOUGHTLESS in build(rng, thoughtless=True) for _ in range(n))
    assert abs(have / n - 0.5) < 0.05
    for _ in range(300):
        out = build(rng, exclude_plot_summary=True, motivation="")
        assert "PLOT-SUMMARY" not in out and "I want the truth." not in out


@pytest.mark.parametrize("seed", range(40))
def test_randomized_rag_placeholder(seed):
    out = build(random.Random(seed), add_rag=True)
    assert out.count("{retrieved_knowledge}") == 1
    assert "Relevant Background Information" in out


def test_decorated_sections_use_one_decorator():
    rng = random.Random(3)
    seen = 0
    while seen < 50:
        out = build(rng, other_character_profiles=OTHERS)
        style = style_of(out)
        if style == "natural":
            continue
        seen += 1
        titles = [block.split("\n")[0] for block in out.split("\n\n")[1:]
                  if block[:1] == style and re.search("[A-Za-z]", block.split("\n")[0])]
        shapes = {(re.match(r"[=#* ]*", t).group(), re.search(r"[=* ]*$", t).group()) for t in titles}
        assert len(titles) >= 3 and len(shapes) == 1, titles


def test_environment_prompt():
    out = P.get_environment_prompt(["Ann", "Environment", "Bob"], "A stormy night.", random.Random(0))
    assert out.count("['Ann', 'Bob']") == 2
    assert out.endswith("===The scenario is as follows===\nA stormy night.")
    roles = {next(r for r in P.ENVIRONMENT_ROLES if r in P.get_environment_prompt(["A"], "s", random.Random(i)))
             for i in range(60)}
    assert roles == set(P.ENVIRONMENT_ROLES)


def test_nsp_prompts():
    train = P.get_nsp_prompt(["Ann", "Environment"], "A stormy night.", eval_version=False)
    ev = P.get_nsp_prompt(["Ann", "Environment"], "A stormy night.", eval_version=True)
    for out in (train, ev):
        assert "['Ann', 'Environment']" in out and "random" in out and "<END CHAT>" in out
        assert "===The scenario is as follows===\nA stormy night." in out
    assert "Reasoning:" not in train and "Next Speaker:" not in train
    assert "===Output Format===" in ev and "Reasoning:" in ev and "Next Speaker:" in ev
    assert ev.startswith(train)
