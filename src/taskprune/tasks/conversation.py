"""The ``conversation`` task kind (a distractor): an everyday user message and an assistant reply.

An item's skeleton is the reply. Scored by retention against the base model's answers
(:mod:`taskprune.tasks.text`); its validation check is an exact match of the reference reply.
"""

from __future__ import annotations

import random
from typing import Any

from taskprune.tasks.text import retention_metric_values
from taskprune.tasks.words import people as _people


def make_conversation(rng: random.Random, w: dict[str, Any]) -> dict[str, str]:
    """An everyday user message and a helpful reply that uses the message's details."""
    (person,) = _people(rng, w, 1)
    city, dish, hobby = rng.choice(w["cities"]), rng.choice(w["dishes"]), rng.choice(w["hobbies"])
    ing1, ing2 = rng.sample(w["ingredients"], 2)
    genre, subject, feeling = rng.choice(w["genres"]), rng.choice(w["subjects"]), rng.choice(w["feelings"])
    day, animal, color = rng.choice(w["weekdays"]), rng.choice(w["animals"]), rng.choice(w["colors"])
    n = rng.randint(2, 9)
    options: list[tuple[str, str]] = [
        (f"Hi! My name is {person.name}. How are you today?",
         f"Hello {person.name}! I am doing well, thank you. How can I help you today?"),
        (f"Can you suggest an easy {dish} recipe with {ing1}?",
         f"Sure! Cook the {dish} with {ing1} and a little {ing2}. Season it with salt and serve it warm."),
        (f"I am planning a trip to {city}. What should I pack?",
         f"For a trip to {city}, pack comfortable shoes, a light jacket and a charger. Check the weather in {city} before you leave."),
        (f"I want to start {hobby}. Any tips for a beginner?",
         f"Great choice! Start {hobby} slowly, practice a little every day and find a friend who enjoys {hobby} too."),
        (f"Can you recommend a good {genre} book?",
         f"If you like {genre}, look for a short {genre} novel with good reviews at your local library."),
        (f"I have a {subject} exam on {day}. How should I study?",
         f"Make a plan for the days before {day}, review your {subject} notes each evening and do practice questions."),
        (f"I feel {feeling} today.",
         f"I am sorry you feel {feeling}. Would you like to talk about it? A short walk or a chat with a friend can help."),
        (f"What is a good name for my new {color} {animal}?",
         f"How about Lucky or Pepper? A {color} {animal} could also be called Sunny."),
        (f"How often should I feed my {animal}?",
         f"Most pets like a {animal} eat once or twice a day. Ask a vet about the right amount for your {animal}."),
        (f"Can you help me write a short message to thank {person.name}?",
         f"Of course! Dear {person.name}, thank you so much for your help. It meant a lot to me."),
        (f"I need to wake up at {n} in the morning. Any advice?",
         f"Go to bed early, put your alarm across the room and set it for {n} o'clock. Avoid screens before sleep."),
        (f"What can I cook with {ing1} and {ing2}?",
         f"You can make a simple {dish} with {ing1} and {ing2}. Add some oil, salt and your favourite herbs."),
        (f"Is it a good idea to visit {city} in winter?",
         f"Yes, {city} can be lovely in winter. There are fewer tourists, but bring warm clothes."),
        (f"My friend {person.name} is sad. How can I cheer {person.obj} up?",
         f"Spend some time with {person.name}, listen carefully and maybe plan something fun together, like {hobby}."),
        ("How many hours of sleep do I need?",
         "Most adults need about seven to nine hours of sleep each night. Try to keep a regular schedule."),
        (f"What should I do this {day} afternoon?",
         f"You could try {hobby}, visit a park or cook {dish} with a friend this {day}."),
        (f"Tell me a fun fact about the color {color}.",
         f"Many people say {color} is their favourite color, and artists mix it in many shades."),
        (f"Can you explain what {subject} is about?",
         f"{subject.capitalize()} is a subject you can learn step by step. Start with the basics and ask questions often."),
    ]  # fmt: skip
    message, reply = rng.choice(options)
    opener = rng.choice(("", "", "Hi! ", "Hello. ", "Hey, ", "Good morning! ", "Quick question: ", "Sorry to bother you. "))
    closer = rng.choice(("", "", " Thanks!", " Thank you.", " Please help.", " Any ideas?"))
    return {"message": f"{opener}{message}{closer}", "reply": reply, "skeleton": f"reply|{reply}"}


def format_row(row: dict[str, Any], synthetic: bool) -> None:
    """``User: {message}\\nAssistant:`` (synthetic) or the raw message; the reference is the reply."""
    m, r = str(row["message"]).strip(), str(row["reply"]).strip()
    row.update(message=m, reply=r, reference=r)
    row["prompt"] = f"User: {m}\nAssistant:" if synthetic else m
    row["completion"] = f" {r}" if synthetic else r


def score_table(df: Any, options: Any) -> Any:
    """No columns besides the retention ones (added by the evaluation stage)."""
    del options
    return df


def metric_values(df: Any, n_samples: int) -> list[tuple[str, str, list[Any]]]:
    del n_samples
    return retention_metric_values(df)
