"""The benchmark workload: 512 fixed English texts of 5-60 words, committed as `sentences.txt`.

Texts are composed deterministically from the hand-written sentences below: some stand alone, others
join two to four of them into a short paragraph (a review, a support ticket, a news item), so lengths
spread over the whole 5-60 word range the way real request streams do. Every contender reads the same
file. `python -m bench.common.sentences --write` regenerates it; a test checks that the file and the
generator agree.
"""

from __future__ import annotations

import argparse
import random
from functools import cache
from pathlib import Path

SENTENCES_FILE = Path(__file__).with_name("sentences.txt")
TEXT_COUNT = 512
MIN_WORDS = 5
MAX_WORDS = 60
SEED = 20260512

BASE_SENTENCES: tuple[str, ...] = (
    # customer support
    "My order still has not arrived.",
    "The package was left at the wrong address again.",
    "I was charged twice for the same subscription this month.",
    "Can you tell me how to reset my password?",
    "The app crashes every time I try to upload a photo from my gallery.",
    "I would like to cancel my account and get a refund for the unused months.",
    "Your support team solved my problem in less than ten minutes, thank you.",
    "The replacement charger you sent me does not fit the laptop I bought from you last year.",
    "After the latest update the login page keeps asking "
    "me for a verification code that never arrives by email.",
    "Please change the delivery date to next Tuesday.",
    "I have been waiting on hold for forty minutes and nobody has answered.",
    "The invoice lists a shipping fee even though the "
    "website promised free delivery on orders above fifty dollars.",
    "Is there a student discount?",
    "The tracking number you gave me does not work on the courier's website.",
    "We need twelve more licenses for the new team that starts on Monday.",
    # product reviews
    "Great sound quality for the price.",
    "The battery barely lasts half a day.",
    "These shoes are comfortable right out of the box, and "
    "they still look new after three months of daily walks.",
    "The blender is loud but it crushes ice in seconds.",
    "I returned the jacket because the sleeves were far too short.",
    "Setup took five minutes and the picture is sharp even in a bright living room.",
    "The instructions were missing, so assembling the desk took most of the afternoon.",
    "Honestly the best coffee grinder I have owned.",
    "The screen scratches far too easily, and the case that "
    "the seller recommended does not protect the corners at all.",
    "It works exactly as described.",
    "My kids love this board game and we play it almost every weekend.",
    "The vacuum picks up pet hair well but the dust bin fills up quickly.",
    "For a budget phone the camera is surprisingly good in daylight, though night photos are grainy.",
    "Would not buy again.",
    "The mattress was too firm for the first week and then softened to just the right level.",
    # news
    "The city council approved the new budget on Thursday.",
    "Heavy rain is expected across the northern region this weekend.",
    "The central bank kept interest rates unchanged for the third meeting in a row.",
    "Officials said the bridge will remain closed while engineers inspect the damage caused by the flood.",
    "Voter turnout reached its highest level in two decades.",
    "The company announced that it will open a new factory and hire about eight hundred workers next year.",
    "Firefighters contained the wildfire after three days of work in difficult terrain.",
    "The museum will return the stolen paintings to the family that owned them before the war.",
    "Train services between the two cities resumed this morning after a week of repairs.",
    "Scientists warn that the lake is shrinking faster than any model predicted.",
    "The striking nurses reached an agreement with the hospital late on Sunday night.",
    "A new law requires landlords to register every rental property with the city by the end of the year.",
    "The mayor resigned.",
    "Ticket prices for public transport will rise by five percent in January.",
    "The airline cancelled more than two hundred flights because of a strike by air traffic controllers.",
    # science and health
    "Regular exercise lowers the risk of heart disease.",
    "The telescope captured images of a galaxy more than ten billion light years away.",
    "Researchers found that the vaccine remained effective for at least two years.",
    "Bees use the position of the sun to navigate between flowers and their hive.",
    "Drinking enough water helps the body regulate its temperature.",
    "The study followed twelve thousand adults for fifteen years and recorded what they ate every day.",
    "Sleep deprivation affects memory, mood and the ability to concentrate.",
    "The new battery chemistry stores twice as much energy and uses no cobalt.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "Coral reefs cover less than one percent of the ocean floor but support a quarter of marine species.",
    "The patient should avoid heavy lifting for six weeks after surgery.",
    "Volcanic eruptions can cool the planet for a year or two by blocking sunlight with ash and sulphur.",
    "Children need more sleep than adults.",
    "The mission will bring rock samples from the asteroid back to Earth in three years.",
    "High blood pressure often has no symptoms, which is why regular checks matter.",
    # technology and software
    "The server returned an internal error.",
    "Restart the router and try connecting again.",
    "The new release fixes a memory leak in the image decoder.",
    "Our database migration took longer than planned because of a missing index on the orders table.",
    "Please update the library to the latest version before filing a bug report.",
    "The function returns an empty list when the input contains no valid records.",
    "We moved the nightly jobs to a queue so that a slow report no longer blocks the others.",
    "Two-factor authentication is now required for every administrator account.",
    "The build fails on machines that do not have the compiler installed.",
    "Latency doubled after the deployment, so we rolled back and started looking at the logs.",
    "The model answers simple questions well but struggles with long documents.",
    "Use environment variables for credentials instead of writing them into the configuration file.",
    "The cluster scales out automatically when the queue grows.",
    "A single misconfigured firewall rule blocked traffic from every office in Europe for an hour.",
    "Backups run every night at two in the morning.",
    # travel
    "The hotel is a short walk from the old town.",
    "Our flight was delayed by three hours because of fog.",
    "The view from the top of the mountain was worth every step of the climb.",
    "Book the museum tickets online to skip the long line at the entrance.",
    "The night train is slower than flying, but you save a hotel night and wake up in the city center.",
    "We rented bicycles and followed the river all the way to the coast.",
    "The room was clean but the air conditioning was noisy.",
    "Bring cash, because many small shops in the village do not accept cards.",
    "The ferry leaves every hour in summer and twice a day in winter.",
    "Our guide knew the history of every building on the square.",
    "Passports must be valid for at least six months after the date of arrival.",
    "The beach was crowded in the afternoon, so we went back early the next morning when it was quiet.",
    "Breakfast was included.",
    "The bus to the airport stops right outside the station.",
    "We missed the last boat and had to spend the night on the island.",
    # food and cooking
    "Preheat the oven to two hundred degrees.",
    "Let the dough rest for an hour before you roll it out.",
    "This soup tastes even better on the second day.",
    "Add the garlic only after the onions turn golden, or it will burn and taste bitter.",
    "The restaurant serves fresh fish caught by local boats every morning.",
    "Whisk the eggs with a pinch of salt and pour them into the hot pan.",
    "Our waiter recommended the lamb, and it was the best dish we ate on the whole trip.",
    "Store the bread in a paper bag, not in the fridge.",
    "The recipe calls for brown sugar, but honey works just as well.",
    "Dinner was delicious.",
    "Slice the tomatoes thinly, season them with salt and olive oil, and leave them for ten minutes.",
    "The bakery sells out of croissants by nine o'clock.",
    "Cook the rice in twice its volume of water.",
    "The portions were small and the prices were high.",
    "My grandmother never measured anything, yet her cakes came out perfect every single time.",
    # finance and business
    "Revenue grew by twelve percent compared with last year.",
    "The board will vote on the merger next month.",
    "Please submit your expense reports by Friday.",
    "The startup raised twenty million dollars to expand into Asia.",
    "Inflation slowed for the fourth month in a row.",
    "Our biggest customer asked for a discount in exchange for a three-year contract.",
    "The quarterly results beat analyst expectations, but the company lowered its forecast for next year.",
    "Interest on the loan is calculated daily and paid monthly.",
    "The shares fell sharply after the chief executive announced his departure.",
    "We need a clearer budget before we hire anyone else.",
    "Small businesses can apply for the grant until the end of March.",
    "The pension fund sold its stake in the coal company.",
    "Sales were flat.",
    "Rising shipping costs have squeezed the margins of every retailer we spoke to.",
    "The bank froze the account while it investigated the suspicious transfers.",
    # sports
    "The home team won in the final minute.",
    "She broke the national record in the hundred meters.",
    "The match was postponed because the pitch was flooded.",
    "After ten years with the club, the captain announced that this season would be his last.",
    "The coach made three substitutions at half time.",
    "The marathon starts at eight and closes the city center until early afternoon.",
    "They lost on penalties.",
    "Tickets for the final sold out within an hour of going on sale.",
    "The young goalkeeper saved two penalties and was named player of the match.",
    "The cyclist crashed on the descent but finished the stage with a bandaged arm.",
    "Our local team has not won the league since my father was a boy.",
    "The tennis final lasted almost five hours.",
    "Training starts at six, so please be on time.",
    "The stadium will be rebuilt with a roof and ten thousand more seats.",
    "He scored twice in his first game for the national team.",
    # everyday life and conversation
    "Can you pick up the kids from school today?",
    "I left my keys on the kitchen table.",
    "Let's meet at the cafe near the station at noon.",
    "The neighbors are having a party again tonight.",
    "Don't forget to water the plants while I am away.",
    "I think it is going to rain, so take an umbrella.",
    "We painted the bedroom a light shade of blue last weekend.",
    "The washing machine has been making a strange noise since yesterday.",
    "My sister is moving to Canada next spring.",
    "Could you send me the photos from the wedding?",
    "I started learning the piano at forty, and it is the best decision I have made in years.",
    "The dog barks at every bicycle that passes the house.",
    "We are out of milk.",
    "The library extended its opening hours during the exam period.",
    "I finally finished the book you lent me, and I loved the ending.",
    # history and culture
    "The castle was built in the twelfth century.",
    "The novel was translated into more than forty languages.",
    "The festival celebrates the end of the harvest with music and dancing in the streets.",
    "The composer wrote his last symphony while he was almost completely deaf.",
    "The ancient road connected the capital with the ports on the southern coast.",
    "Her paintings were ignored during her lifetime and are now worth millions.",
    "The treaty ended a war that had lasted more than thirty years.",
    "The film won three awards, including best director.",
    "Printing made books cheaper and spread new ideas across Europe within a few decades.",
    "The theater reopened after five years of restoration.",
    "Many of the city's streets still follow the plan of the Roman camp.",
    "The poet spent the last years of her life in a small house by the sea.",
    "The exhibition brings together maps drawn by sailors over four centuries.",
    "Jazz grew out of the blues and ragtime in the early twentieth century.",
    "The cathedral took almost two hundred years to complete.",
    # education and work
    "The exam results will be published online on Friday.",
    "Students must submit their essays before midnight.",
    "The new teacher makes mathematics feel like a game.",
    "Our team meets every Monday morning to plan the week.",
    "The course covers statistics, programming and the basics of machine learning.",
    "Remote work saves me two hours of commuting every day.",
    "The interview went well, and they promised to call me back next week.",
    "The school is raising money for a new science laboratory.",
    "Please review the draft and send me your comments by Wednesday afternoon.",
    "The internship turned into a full-time job after six months.",
    "The university offers free language classes to all international students.",
    "I am presenting the project results to the board tomorrow morning.",
    "The office will be closed on Monday for the public holiday.",
    "Our manager asked everyone to take at least two weeks of holiday this summer.",
    "The training manual has not been updated since the old system was replaced.",
    # environment and nature
    "The forest is home to more than two hundred species of birds.",
    "Plastic waste on the beaches has doubled in ten years.",
    "Solar panels now supply a third of the town's electricity.",
    "The river froze completely for the first time in a generation.",
    "Wolves have returned to the valley after an absence of a hundred years.",
    "The new park will replace an abandoned parking lot near the harbor.",
    "Farmers are planting crops that need less water as droughts become more common.",
    "The storm knocked down hundreds of trees across the region.",
    "Recycling rates improved after the city introduced separate bins for food waste.",
    "The glacier has retreated almost a kilometer since the nineteen eighties.",
    "Cars will be banned from the old town on weekends.",
    "The wetlands protect the coast from flooding and filter the water that reaches the sea.",
    "Spring arrived two weeks early this year.",
    "Volunteers planted ten thousand trees along the motorway.",
    "The air quality warning was lifted after the wind changed direction.",
)


def word_count(text: str) -> int:
    return len(text.split())


def compose_texts(
    count: int = TEXT_COUNT, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS, seed: int = SEED
) -> list[str]:
    """`count` distinct texts whose word counts spread evenly over [min_words, max_words]."""
    rng = random.Random(seed)
    texts: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(texts) < count:
        attempts += 1
        if attempts > count * 1000:
            raise RuntimeError("could not compose enough distinct texts; add base sentences")
        target = min_words + (len(texts) * (max_words - min_words + 1)) // count
        parts: list[str] = []
        words = 0
        while words < target:
            sentence = rng.choice(BASE_SENTENCES)
            if sentence in parts:
                continue
            if words and words + word_count(sentence) > max_words:
                break
            parts.append(sentence)
            words += word_count(sentence)
        text = " ".join(parts)
        # A draw far off its slot's length is retried, so the length spread stays even.
        if text in seen or not min_words <= words <= max_words or abs(words - target) > 6:
            continue
        seen.add(text)
        texts.append(text)
    rng.shuffle(texts)
    return texts


@cache
def load_texts() -> tuple[str, ...]:
    """The committed workload, in its fixed order."""
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite {SENTENCES_FILE.name}")
    args = parser.parse_args()
    texts = compose_texts()
    if args.write:
        SENTENCES_FILE.write_text("\n".join(texts) + "\n", encoding="utf-8")
    lengths = sorted(word_count(text) for text in texts)
    print(f"{len(texts)} texts, {lengths[0]}-{lengths[-1]} words, median {lengths[len(lengths) // 2]}")


if __name__ == "__main__":
    main()
