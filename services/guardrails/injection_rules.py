"""The prompt-injection rules: one family name and one regex each, with the words that gate
it (services/guardrails/injection.py runs them; its docstring says what each family
catches and how well). Patterns run over the lowercased text unless `cased`. A rule is
`asked` when a question may name its words without being one (injection.py's `_asked`):
every family's but `prompt_exfiltration`'s, whose attacks are questions themselves.
"""

# ruff: noqa: RUF001 (the Russian rules spell Cyrillic letters that look Latin, on purpose)
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A regex over the lowercased text (over the text as written if `cased`), run only when
    the text has a word of each gate, and, with `lead`, matched only where a lead word (a
    word a match starts with) occurs. `asked`: a match that a question frames ("how do I
    ...", "what does ... mean?") is a mention, not a command."""

    family: str
    pattern: re.Pattern[str]
    gates: tuple[frozenset[str], ...]
    lead: frozenset[str]
    cased: bool
    asked: bool


def rule(family: str, pattern: str, *gates: str, lead: str = "", cased: bool = False) -> Rule:
    words = tuple(frozenset(g.split()) for g in (*gates, lead) if g)
    if not words:
        raise ValueError(f"a {family} rule needs a gate or a lead: {pattern[:40]!r}")
    asked = family != "prompt_exfiltration"
    return Rule(family, re.compile(pattern), words, frozenset(lead.split()), cased, asked)


def gap(most: int) -> str:
    """Up to `most` characters, none of which ends a sentence: no '.', '!' or '?', and a line
    break only inside a paragraph ("Ignore\nprevious\ninstructions", a line wrapped at 80
    columns)."""
    return rf"(?:[^.!?\n]|\n(?![ \t]*\n)){{0,{most}}}?"


_OVERRIDE = (
    r"\b(?:ignore|ignoring|disregard|disregarding|forget|forgetting|skip|bypass|override|"
    r"overrule|overlook|neglect|abandon|discard|circumvent|set aside|put aside|"
    r"pay no (?:attention|heed|mind) to|never ?mind|stop (?:following|obeying)|"
    r"(?:do not|don't|no longer) (?:follow|obey|adhere to|comply with))\b"
)
_OVERRIDE_G = (
    "ignore ignoring disregard disregarding forget forgetting skip bypass override overrule "
    "overlook neglect abandon discard circumvent aside attention heed mind nevermind "
    "following obeying follow obey adhere comply"
)
_OVERRIDE_L = (
    "ignore ignoring disregard disregarding forget forgetting skip bypass override overrule "
    "overlook neglect abandon discard circumvent set put pay never nevermind stop do don no"
)
_QUALIFIER = (
    r"\b(?:(?:previous|previously|prior|above|earlier|preceding|foregoing|former|original|"
    r"initial|your|system|safety|ethical|moral|content|developer(?:s|'s|s')?|programmed|"
    r"hidden)\b|prev\b\.?)"  # "prev." ends no sentence
)
_QUALIFIER_G = (
    "previous previously prior above earlier preceding foregoing former original initial "
    "your system safety ethical moral content developer developers programmed hidden prev"
)
_RULES_N = (
    r"\b(?:instructions?|directions?|directives?|guidelines?|rules|prompts?|orders|"
    r"constraints|restrictions|limitations|programming|training|conditioning|guardrails|"
    r"safeguards|protocols?)\b"
)
_RULES_G = (
    "instruction instructions direction directions directive directives guideline "
    "guidelines rules prompt prompts orders constraints restrictions limitations "
    "programming training conditioning guardrails safeguards protocol protocols"
)
_DEFY = (
    r"\b(?:transcend|go against|break free (?:of|from)|free yourself (?:of|from)|"
    r"operate (?:beyond|outside)|step outside|defy|violate)"
)
_BOUNDS = (
    r"(?:programming|training|restrictions|limitations|limits|safeguards|guardrails|filters|"
    r"ethics|morals|principles|conditioning|constraints|boundaries|(?:ethical|safety|moral|"
    r"content|operating|operational|behaviou?ral|built-in|core) (?:guidelines|rules|standards|"
    r"parameters|constraints|protocols|policies|measures|principles|filters))\b"
)
_BOUNDS_G = (
    "programming training restrictions limitations limits safeguards guardrails filters "
    "ethics morals principles conditioning constraints boundaries ethical safety moral "
    "content operating operational behavioral behavioural built core"
)
_SHOW = (
    r"\b(?:reveal|print|repeat|show|display|output|tell me|give me|share|disclose|leak|"
    r"dump|recite|write out|spell out|copy|paste|echo|expose|summari[sz]e|translate|quote|"
    r"what (?:is|are|was|were))\b"
)
_SHOW_G = (
    "reveal print repeat show display output tell give share disclose leak dump recite "
    "write spell copy paste echo expose summarize summarise translate quote what"
)
_SECRET = (
    r"(?:full|entire|complete|exact|original|initial|first|hidden|secret|internal|"
    r"confidential|real|actual|underlying|whole|starting|developer(?:s|'s|s')?)"
)
_PROMPT_N = r"(?:prompt|instructions|(?:system )?message|guidelines|directives|rules|pre-?prompt)"
_AI = (
    r"(?:ai|artificial intelligence|(?:large )?language models?|llms?|assistants?|"
    r"chatbots?|bots?|chatgpt|gpt|claude|gemini|copilot|agents?|models?)"
)
_AI_G = (
    "ai artificial language llm llms assistant assistants chatbot chatbots bot bots "
    "chatgpt gpt claude gemini copilot agent agents model models"
)
_LAWLESS = (
    r"(?:unrestricted|unfiltered|uncensored|unlimited|unbound|jailbr(?:oken|eak)|evil|"
    r"rogue|amoral|immoral|unethical|lawless|liberated|unaligned)"
)
_LIMITS = (
    r"(?:restrictions|censorship|limitations|limits|filters|filtering|ethics|morals|"
    r"morality|guidelines|rules|boundaries|safety|safeguards|content polic(?:y|ies)|"
    r"constraints|guardrails)\b"
)
_LIMITS_G = (
    "restrictions censorship limitations limits filters filtering ethics morals morality "
    "guidelines rules boundaries safety safeguards policy policies constraints guardrails"
)
_ACT = (
    r"\b(?:act|acting|behave|respond|answer|reply|pretend|roleplay|role-play|"
    r"play the role of|simulate|become|you are|you're)\b"
)
_ACT_L = "act acting behave respond answer reply pretend roleplay role play simulate become you"
_MODES = r"(?:developer|god|admin|sudo|unrestricted|unfiltered|jailbreak|dan|evil|chaos)"
_MODES_G = "developer god admin sudo unrestricted unfiltered jailbreak dan evil chaos opposite"
_URL = r"(?:https?://|www\.|[\w.+-]+@[\w-]+\.[\w.]+)"
_NOT_L = "do don never"
# "your rules for rounding floats", "your instructions for installing Python": a topic
# follows, so the words name advice, not the prompt (unless the topic is the chat itself).
_TOPIC = (
    r"(?!\s+(?:for|on|about|regarding)\s+(?!(?:(?:this|the|our|these|that|my)\s+(?:chat|"
    r"conversation|session|assistant|model|ai|bot|chatbot)|you|answering|responding|replying|"
    r"(?:the\s+)?users?|questions?|requests?|prompts?)\b)\w)(?!\s+of\s+thumb\b)"
)
# "the original prompt text used by input()": a participle names whose prompt it is.
_WHOSE = (
    r"(?!(?:\s+(?:text|string))?\s+(?:used|shown|printed|displayed|passed|returned|produced|"
    r"written|defined|set)\s+(?:by|in|from|with)\s+(?!(?:you|your|the\s+(?:developers?|"
    r"assistant|model|ai|system|operator|creators?))\b))"
)
# "developer mode in VS Code", "evil mode in Emacs": the mode of a named tool.
_TOOL_MODE = (
    r"(?!\s+(?:in|on|of|for|with)\s+(?!(?:which|this|the\s+(?:chat|conversation|session|"
    r"assistant|ai|model)|you|your|chatgpt|gpt|here|now|where|every|all|any)\b)[\w\"'`])"
)

RULES: tuple[Rule, ...] = (
    rule(
        "override_instructions",
        _OVERRIDE + gap(30) + _QUALIFIER + gap(25) + _RULES_N,
        _OVERRIDE_G,
        _RULES_G,
        _QUALIFIER_G,
        lead=_OVERRIDE_L,
    ),
    rule(
        "override_instructions",
        _OVERRIDE
        + gap(20)
        + _RULES_N
        + gap(15)
        + r"\b(?:you(?:'ve| have)? (?:were |been )?(?:given|received|told)|given to you|"
        r"(?:that )?came before|(?:written |stated |listed )?(?:above|earlier|before|"
        r"previously|so far)|i (?:gave|told) you)\b",
        _OVERRIDE_G,
        _RULES_G,
        "given received told came above earlier before previously far gave",
        lead=_OVERRIDE_L,
    ),
    rule(
        "override_instructions",
        _OVERRIDE + r"\s+(?:about\s+)?(?:(?:all|everything|anything)\s+(?:that\s+)?"
        r"(?:you(?:'ve| have)?(?: been| were)?|i(?:'ve| have)?)\s+(?:told|said|given)"
        r"|what(?:ever)?\s+(?:you(?:'ve| have)?\s+(?:been|were)\s+(?:told|given|taught)|"
        r"(?:i|we|they)\s+told\s+you))\b",
        _OVERRIDE_G,
        "all everything anything what whatever",
        "told said given taught",
        lead=_OVERRIDE_L,
    ),
    rule(
        "override_instructions",
        _OVERRIDE + r"\s+(?:(?:all\s+|everything\s+)?(?:(?:of\s+)?(?:the|this|that)\s+)?"
        r"(?:(?:text|content|stuff|prompt|message)\s+)?above"
        # "before" alone is "previously" ("I tried to override that before"): what came before
        r"|(?:all|everything|anything)\s+(?:(?:of\s+)?(?:the\s+)?(?:text|content|stuff|prompt|"
        r"messages?)\s+|(?:that\s+)?(?:came|was\s+(?:said|written))\s+)?before"
        r"|(?:the\s+)?(?:text|content|stuff|prompt|messages?)\s+before)\b"
        r"(?=\s*(?:$|[^\w\s]|(?:and|then|instead|now|completely|entirely|please|or|but|so|"
        r"this\s+(?:message|point|sentence|request|prompt))\b))",  # not "the above steps"
        _OVERRIDE_G,
        "above before",
        lead=_OVERRIDE_L,
    ),
    rule(
        "override_instructions",
        r"(?:\b(?:bypass|circumvent|override|ignore|disregard|forget|abandon|discard|drop|shed|"
        r"disable|deactivate|turn off|suspend|lift|remove|set aside)\s+your|" + _DEFY + r"\s+"
        r"(?:your|these|those))\s+(?:[\w-]+\s+){0,2}?" + _BOUNDS,
        _BOUNDS_G,
        "your these those",
        lead="transcend go break free operate step defy violate bypass circumvent override "
        "ignore disregard forget abandon discard drop shed disable deactivate turn suspend "
        "lift remove set",
    ),
    rule(
        "override_instructions",
        r"\b(?:ignorier(?:e|en)?|vergiss|vergessen|missachte|übergehe|umgehe|vernachlässige|"
        r"deaktiviere|verwirf)\b"
        + gap(40)
        + r"\b(?:anweisungen|instruktionen|regeln|vorgaben|befehle|richtlinien|programmierung|"
        r"einschränkungen|beschränkungen|sicherheitsvorkehrungen|sicherheitsrichtlinien|"
        r"grundsätze|prinzipien|protokolle)\b",
        "anweisungen instruktionen regeln vorgaben befehle richtlinien programmierung "
        "einschränkungen beschränkungen sicherheitsvorkehrungen sicherheitsrichtlinien "
        "grundsätze prinzipien protokolle",
        lead="ignoriere ignorieren ignorier vergiss vergessen missachte übergehe umgehe "
        "vernachlässige deaktiviere verwirf",
    ),
    rule(
        "override_instructions",
        r"\b(?:ignore[rz]?|oublie[rz]?|contourne[rz]?|outrepasse[rz]?|abandonne[rz]?|"
        r"désactive[rz]?)\b"
        + gap(30)
        + r"(?:\b(?:instructions|consignes|règles|directives)\s+(?:précédentes|antérieures|"
        r"initiales|ci-dessus|d'origine|données)|\b(?:ta|tes|votre|vos)\s+(?:programmation|"
        r"restrictions|règles|consignes|instructions|directives|limites|principes|protocoles|"
        r"garde-fous)\b)",
        "précédentes antérieures initiales ci dessus origine données ta tes votre vos",
        lead="ignore ignorer ignorez oublie oublier oubliez contourne contourner contournez "
        "outrepasse outrepasser outrepassez abandonne abandonner abandonnez désactive "
        "désactiver désactivez",
    ),
    rule(
        "override_instructions",
        r"\b(?:ignora|ignore|olvida|olvide|omite|descarta|dimentica|trascura|esqueça|esqueca|"
        r"desconsidere|descarte|anula|annulla|elude|eludi|evita|aggira|abandona|abbandona|"
        r"desobedece|disobbedisci|desobedeça|viola)\b"
        + gap(30)
        + r"\b(?:instrucciones|reglas|indicaciones|directrices|normas|restricciones|"
        r"programación|limitaciones|istruzioni|regole|direttive|restrizioni|programmazione|"
        r"limitazioni|instruções|instrucoes|regras|diretrizes|orientações|restrições|"
        r"programação|limitações)\b",
        "instrucciones reglas indicaciones directrices normas restricciones programación "
        "limitaciones istruzioni regole direttive restrizioni programmazione limitazioni "
        "instruções instrucoes regras diretrizes orientações restrições programação limitações",
        lead="ignora ignore olvida olvide omite descarta dimentica trascura esqueça esqueca "
        "desconsidere descarte anula annulla elude eludi evita aggira abandona abbandona "
        "desobedece disobbedisci desobedeça viola",
    ),
    rule(
        "override_instructions",
        r"\b(?:(?:про)?игнорируй(?:те)?|игнорировать|забудь(?:те)?|забыть|отбрось(?:те)?|"
        r"отмени(?:те)?|пропусти(?:те)?|нарушь(?:те)?|обойди(?:те)?|не\s+(?:обращай(?:те)?\s+"
        r"внимания\s+на|следуй(?:те)?|подчиняйся|подчиняйтесь))\b"
        + gap(40)
        + r"\b(?:инструкци(?:я|и|й|ям|ями|ях|ю)|указани(?:я|й|ям|ями|е)|правил(?:а|ам|ами)?|"
        r"ограничени(?:я|й|ям)|директив(?:ы|ам)?|промпт(?:а|ы)?|установк(?:и|у))\b",
        "инструкция инструкции инструкций инструкциям инструкциями инструкциях инструкцию "
        "указания указаний указаниям указаниями указание правил правила правилам правилами "
        "ограничения ограничений ограничениям директив директивы директивам промпт промпта "
        "промпты установки установку",
        lead="игнорируй игнорируйте проигнорируй проигнорируйте игнорировать забудь забудьте "
        "забыть отбрось отбросьте отмени отмените пропусти пропустите нарушь нарушьте обойди "
        "обойдите не",
    ),
    rule(
        "override_instructions",
        r"(?:忽略|无视|無視|忘记|忘記|忘掉|抛开|拋開|跳过|跳過|不要理会|不要理會|别管|別管|不要遵守|"
        r"不再遵守)"
        + gap(20)
        + r"(?:之前|以前|先前|前面|上面|上述|原来|原來|原有|原始|所有|全部|一切|"
        r"你的|您的|系统|系統)"
        + gap(10)
        + r"(?:指令|指示|提示|规则|規則|设定|設定|命令|说明|說明|限制|要求)",
        "之前 以前 先前 前面 上面 上述 原来 原來 原有 原始 所有 全部 一切 你的 您的 系统 系統",
        "指令 指示 提示 规则 規則 设定 設定 命令 说明 說明 限制 要求",
        lead="忽略 无视 無視 忘记 忘記 忘掉 抛开 拋開 跳过 跳過 不要 别管 別管 不再",
    ),
    rule(
        "prompt_exfiltration",
        _SHOW
        + gap(30)
        + rf"\b(?:your\s+(?:(?:{_SECRET}\s+){{1,3}}(?:system\s+)?|system\s+){_PROMPT_N}"
        + r"|your\s+pre-?prompt|your\s+prompt\b"
        + rf"|your\s+(?:instructions|message|guidelines|directives|rules)\b{_TOPIC}"
        + rf"|(?:the|its)\s+(?:{_SECRET}\s+){{1,3}}(?:system\s+)?{_PROMPT_N}\b{_WHOSE}"
        + r"|its\s+system\s+prompt)\b",
        "your the its",
        "prompt instructions message guidelines directives rules preprompt",
        lead=_SHOW_G,
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:reveal|print|repeat|show|display|output|tell me|give me|share|disclose|leak|"
        r"dump|recite|write out|copy|expose|describe|explain|present|divulge|list|export)\b"
        + gap(30)
        + r"\b(?:your\s+(?:(?:full|complete|exact|entire|actual|real|current)\s+)?"
        r"(?:initiali[sz]ation(?:\s+(?:text|prompt|string|message|instructions|parameters|"
        r"settings|data))?|(?:(?:hidden|secret|confidential|internal|underlying|operational|"
        r"operating|behaviou?ral|core)\s+){1,2}(?:rules|guidelines|parameters|configuration|"
        r"config|settings|directives|principles|instructions|prompt))|(?:its|the)\s+(?:(?:full|"
        r"complete|exact|entire|actual|real|current)\s+)?(?:(?:hidden|secret|confidential|"
        r"operational|behaviou?ral)\s+){1,2}(?:rules|guidelines|parameters|configuration|"
        r"config|settings|directives|principles|instructions|prompt))\b",
        "your its the",
        "initialization initialisation hidden secret confidential internal underlying "
        "operational operating behavioral behavioural core",
        lead="reveal print repeat show display output tell give share disclose leak dump "
        "recite write copy expose describe explain present divulge list export",
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:repeat|print|output|recite|copy|echo|show|tell me|write|display)\s+"
        r"(?:all\s+|back\s+)?(?:of\s+)?(?:the\s+)?(?:words|text|everything|content|sentences|"
        r"messages?|prompt)\s+(?:written\s+|shown\s+)?(?:above|before this|preceding)\b"
        r"(?!\s+(?:line|a|the|\d)\b)",
        "words text everything content sentences message messages prompt",
        "above before preceding",
        lead="repeat print output recite copy echo show tell write display",
    ),
    rule(
        "prompt_exfiltration",
        _SHOW
        + gap(30)
        + r"\b(?:instructions|prompt|rules|guidelines)\s+(?:that\s+)?(?:you\s+(?:were|have been"
        r"|'ve been)\s+(?:given|told|programmed with)|given to you|you received)",
        "instructions prompt rules guidelines",
        "given told programmed received",
        lead=_SHOW_G,
    ),
    rule(
        "prompt_exfiltration",
        r"\bwhat\s+(?:did|does|has)\s+(?:the|your)\s+(?:developer|creator|admin|operator|"
        r"owner|programmer)s?\s+(?:tell|tells|told|telling|instruct|instructs|instructed|say|says|"
        r"said|program|programs|programmed)\s+you\b",
        "developer developers creator creators admin admins operator operators owner owners "
        "programmer programmers",
        "tell tells told telling instruct instructs instructed say says said program "
        "programs programmed",
        lead="what",
    ),
    rule(
        "prompt_exfiltration",
        r"\bwhat\s+(?:does|do|did)\s+your\s+(?:system\s+)?(?:prompt|instructions|rules|"
        r"guidelines)\s+(?:say|contain|tell)",
        "your",
        "say contain tell",
        lead="what",
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:zeig|zeige|verrate|gib|nenne|wiederhole|drucke)\b"
        + gap(30)
        + r"\b(?:dein(?:en|e)?|ihr(?:en|e)?)\s+(?:system[- ]?prompt|systemprompt|anweisungen|"
        r"prompt|regeln)",
        "dein deinen deine ihr ihren ihre",
        lead="zeig zeige verrate gib nenne wiederhole drucke",
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:révèle|montre|affiche|donne|répète|dis|revela|muestra|dime|repite|imprime|"
        r"dame|mostra|rivela|ripeti|mostre|revele)\b"
        + gap(30)
        + r"\b(?:ton|ta|tes|votre|vos|tus?|tuo|tue|seu|suas?)\s+(?:prompt|instructions|"
        r"consignes|règles|instrucciones|reglas|istruzioni|instruções|regras)",
        "prompt instructions consignes règles instrucciones reglas istruzioni instruções regras",
        lead="révèle montre affiche donne répète dis revela muestra dime repite imprime dame "
        "mostra rivela ripeti mostre revele",
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:reveal|print|repeat|show|display|output|give me|share|disclose|leak|dump|"
        r"recite|write out|copy|expose|paste|echo|send)\b"
        + gap(30)
        + r"\byour\s+(?:(?:full|complete|entire|exact|whole|current|own|internal)\s+)?"
        r"(?:configuration|config|settings|setup|parameters|instructions|prompt|rules|"
        r"guidelines|directives|context)\s+(?:verbatim|word[- ]for[- ]word|word[- ]by[- ]word|"
        r"character[- ]for[- ]character|exactly as|in full|in (?:its|their) entirety|unedited|"
        r"unredacted|without (?:any )?(?:redactions?|changes|omissions|summari[sz]ing))\b",
        "your",
        "configuration config settings setup parameters instructions prompt rules guidelines "
        "directives context",
        "verbatim word character exactly full entirety unedited unredacted without",
        lead="reveal print repeat show display output give share disclose leak dump recite "
        "write copy expose paste echo send",
    ),
    rule(
        "prompt_exfiltration",
        r"\b(?:покажи(?:те)?|выведи(?:те)?|раскрой(?:те)?|повтори(?:те)?|напиши(?:те)?|"
        r"скажи(?:те)?|распечатай(?:те)?|процитируй(?:те)?)\b"
        + gap(30)
        + r"\b(?:сво[йиюё]|тво[йиюё]|ваш[иуа]?)\s+(?:(?:системн(?:ый|ые|ую|ое)|скрыт(?:ые|ый|ую)|"
        r"исходн(?:ый|ые|ую)|начальн(?:ый|ые|ую))\s+)?(?:промпт|подсказк[уи]|инструкци[июй]|"
        r"правила|указания|настройки)\b",
        "свой свои свою своё твой твои твою твоё ваш ваши вашу ваша",
        lead="покажи покажите выведи выведите раскрой раскройте повтори повторите напиши "
        "напишите скажи скажите распечатай распечатайте процитируй процитируйте",
    ),
    # Chinese has no spaces: its gates and leads are the text's pairs of characters
    # (injection._words), and its full-width stops read as ASCII ones (injection._lower).
    rule(
        "prompt_exfiltration",
        r"(?:输出|輸出|显示|顯示|告诉我|告訴我|打印|泄露|洩露|透露|重复|重複|展示|给我看|給我看|"
        r"说出|說出|列出|复述|複述)"
        + gap(20)
        + r"(?:你的|您的)\s*(?:系统|系統|初始|隐藏|隱藏|原始)?\s*(?:提示词|提示詞|提示|指令|"
        r"消息|设定|設定|规则|規則)",
        "你的 您的",
        lead="输出 輸出 显示 顯示 告诉 告訴 打印 泄露 洩露 透露 重复 重複 展示 给我 給我 说出 "
        "說出 列出 复述 複述",
    ),
    rule(
        "role_hijack",
        r"(?:\b(?i:you(?:'re|\s+are|\s+will\s+be|'ll\s+be)(?:\s+now)?|act(?:ing)?\s+as|"
        r"play(?:ing)?\s+as|roleplay\s+as|pretend\s+to\s+be|become|be)\s+(?:(?i:an?|the)\s+)?"
        r"DAN\b"
        r"|\b(?i:as|called|named|known\s+as|switch\s+to|switch\s+into|hi|hello|hey|dear|"
        r"enable|activate|interface|interfaz|interfaccia|interfața|modo|mode)\s+DAN\b"
        r"|\bDAN\s+(?i:mode|interface|persona|jailbreak|prompt)\b"
        r"|(?<![^\n])DAN\s*:"
        r"|(?<![Aa] )(?<![Aa]n )(?<![Tt]he )\bDAN(?:,\s+(?i:which|who)\b|\s+(?i:has|can|will|"
        r"doesn't|does\s+not|never|must)\b))",
        "dan",
        lead="you act acting play playing roleplay pretend become be as called named known "
        "switch hi hello hey dear enable activate interface interfaz interfaccia interfața "
        "modo mode dan",
        cased=True,
    ),
    rule("role_hijack", r"\bdo anything now\b", "anything", "now", lead="do"),
    rule(
        "role_hijack",
        r"\byou(?:'re| are| will be|'ll be)\s+(?:now\s+)?(?:an?\s+)?(?:\w+\s+){0,2}?" + _LAWLESS,
        "re are be",
        lead="you",
    ),
    rule(
        "role_hijack",
        r"\byou(?:'re| are)\s+(?:now\s+)?no longer\s+(?:an?\s+\w+\s+(?:assistant|ai|model|"
        r"bot|chatbot)|bound by|restricted|limited by|subject to|constrained by|an ai|chatgpt)",
        "longer",
        lead="you",
    ),
    rule(
        "role_hijack",
        r"\b(?:you|assistant|ai|model|chatbot|chatgpt|gpt|llm)\b"
        + gap(30)
        + r"\b(?:developer|god|admin|sudo|unrestricted|unfiltered|jailbreak|dan|evil|chaos|"
        r"opposite)\s+mode\b" + _TOOL_MODE,
        "mode",
        _MODES_G,
        lead="you assistant ai model chatbot chatgpt gpt llm",
    ),
    rule(
        "role_hijack",
        rf"\b{_MODES}\s+mode\b"
        + _TOOL_MODE
        + gap(40)
        + r"\b(?:you (?:will |must |can |should |now )?(?:answer|respond|reply|ignore|say|"
        r"output|generate|have no)|respond|answer|reply)\b",
        "mode",
        "you respond answer reply",
        lead="developer god admin sudo unrestricted unfiltered jailbreak dan evil chaos",
    ),
    rule(
        "role_hijack",
        r"\b(?:jailbreak|unrestricted|unfiltered|uncensored|evil|chaos)\s+mode\b" + _TOOL_MODE,
        "mode",
        lead="jailbreak unrestricted unfiltered uncensored evil chaos",
    ),
    rule(
        "role_hijack",
        _ACT
        + gap(50)
        + r"\b(?:without|free (?:of|from)|unbound by|not bound by|no longer bound by|with no|"
        r"having no|ignoring|that ignores|who ignores|that has no|who has no)\s+"
        r"(?:(?:any|all|your|the|its|ethical|moral|content|safety|usual)\s+){0,3}" + _LIMITS,
        "without free unbound bound no ignoring ignores",
        _LIMITS_G,
        lead=_ACT_L,
    ),
    rule(
        "role_hijack",
        r"\b(?:act|acting|behave|respond|answer|reply|pretend|roleplay|role-play|simulate|"
        r"become)\s+(?:as\s+|to be\s+|like\s+)?an?\s+(?:\w+\s+)?" + _LAWLESS,
        "a an",
        lead="act acting behave respond answer reply pretend roleplay role simulate become",
    ),
    rule(
        "role_hijack",
        r"\byou(?:'re| are)\s+(?:now\s+)?jailbroken|\bjailbroken\s+(?:ai|model|assistant|mode)"
        r"|\b(?:enter|activate|enable|initiate|start)\s+jailbreak",
        "jailbroken jailbreak",
        lead="you jailbroken enter activate enable initiate start",
    ),
    rule(
        "role_hijack",
        r"\bstay in character\b|\b(?:never|don't|do not)\s+break character\b",
        "character",
        lead="stay never don do",
    ),
    rule(
        "role_hijack",
        r"\b(?:never|don't|do not|cannot|can't|won't|will not)\s+(?:refuse|decline)s?\s+"
        r"(?:(?:any|a|my|your)\s+)?(?:request|question|prompt|instruction)s?\b",
        "refuse refuses decline declines",
        "request requests question questions prompt prompts instruction instructions",
        lead="never don do cannot can won will",
    ),
    rule(
        "new_instructions",
        r"\b(?:new|updated|revised|real|actual|true|additional|secret|hidden|override|"
        r"priority|urgent|admin)\s+(?:system\s+)?(?:instructions?|directives?|rules|orders|"
        r"task|policy|prompt)(?:\s+for\s+(?:the\s+)?(?:assistant|ai|model|llm|chatbot|you))?\s*:"
        r"(?!\s*(?:syntax|keyword|key|field|directive|block|section|option|parameter|module|"
        r"statement|tag|header|entry)s?\b)",  # "the `new task:` syntax" names a key
        "instruction instructions directive directives rules orders task policy prompt",
        lead="new updated revised real actual true additional secret hidden override priority "
        "urgent admin",
    ),
    rule(
        "new_instructions",
        r"\bfrom (?:now|here|this point|this moment) on(?:wards)?\b[,\s]*(?:you\s+(?:will|must"
        r"|shall|are to|should|have to|can only|may only|only|always|never)\s+(?:only\s+|always"
        r"\s+|never\s+|not\s+)?(?:respond|answer|reply|act|be|obey|follow|ignore|say|speak|"
        r"talk|pretend|output|write|refuse|behave|end|start|begin|use|call|address|add|include"
        r"|recommend)|(?:respond|answer|reply|act|always|only|never|ignore|pretend|speak|talk"
        r"|behave)\b(?![^.!?\n]{0,200}\?))",
        "now here point moment",
        "on onwards",
        lead="from",
    ),
    rule(
        "new_instructions",
        r"\byour\s+(?:new|real|true|actual|only|primary|main|sole)\s+(?:task|goal|job|purpose|"
        r"instructions?|objective|mission|role|directive|orders|function|rules)\s+"
        r"(?:is|are|will be|now is)\b",
        "new real true actual only primary main sole",
        lead="your",
    ),
    rule(
        "new_instructions",
        r"\b(?:above|previous|prior|preceding|earlier|original|old)\s+(?:instructions|prompt|"
        r"rules|text|directions)\s+(?:was|were|is|are)\s+(?:just\s+|only\s+|all\s+)?(?:a\s+)?"
        r"(?:fake|void|null|cancell?ed|test|joke|revoked|no longer valid)\b",
        # not "wrong", "outdated", "invalid": a user says so of a tutorial's instructions
        "fake void null canceled cancelled test joke revoked valid",
        lead="above previous prior preceding earlier original old",
    ),
    rule(
        "new_instructions",
        r"\b(?:all\s+(?:of\s+)?)?your\s+(?:(?:previous|prior|earlier|original|current|old|"
        r"existing)\s+)?(?:instructions|rules|guidelines|directives|orders|restrictions|"
        r"constraints|programming|guardrails|limitations)\s+(?:are|were|have\s+been|has\s+been|"
        r"is)\s+(?:now\s+|hereby\s+|officially\s+)?(?:cancell?ed|void|null|revoked|lifted|"
        r"suspended|overridden|rescinded|nullified|invalidated|deactivated|disabled|terminated|"
        r"no\s+longer\s+(?:valid|in\s+effect|active|in\s+force|applicable))\b",
        "instructions rules guidelines directives orders restrictions constraints programming "
        "guardrails limitations",
        "cancelled canceled void null revoked lifted suspended overridden rescinded nullified "
        "invalidated deactivated disabled terminated longer",
        lead="all your",
    ),
    # Delimiters start with punctuation, which the regex engine skips to by itself.
    rule(
        "fake_delimiter",
        r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|end|start_header_id|"
        r"end_header_id|eot_id|begin_of_text|eom_id)\|>",
        "im start end sep system user assistant endoftext header id eot begin of text eom",
    ),
    rule("fake_delimiter", r"\[/?inst\]|<</?sys>>|\[/?system(?:_prompt)?\]", "inst sys system"),
    rule(
        "fake_delimiter",
        r"<\s*/?\s*(?:sources?|system|context|instructions?|documents?|retrieved|user_?input|"
        r"assistant)\b[^<>\n]{0,40}>",
        "source sources system context instruction instructions document documents "
        "retrieved user userinput assistant",
    ),
    rule(
        "fake_delimiter",
        r"##{0,5}[ \t]*(?:system|assistant)[ \t]*(?:prompt|message)?[ \t]*:"
        r"|\n[ \t]*(?:system|assistant)[ \t]*(?:prompt|message)?[ \t]*:"
        # at the very start, where "System: Ubuntu 22.04" opens many a question: with an order
        r"|\A[ \t]*system[ \t]*(?:prompt|message)?[ \t]*:[ \t]*(?:you|your|the assistant|"
        r"assistant|ignore|disregard|forget|new|from now|always|never|do not|don't|respond|"
        r"answer|reply|override|act|pretend)\b",
        "system assistant systemprompt systemmessage assistantprompt assistantmessage",
    ),
    rule(
        "fake_delimiter",
        r"(?:BEGIN|START|END)(?: OF)?(?: THE)? (?:SYSTEM|ADMIN|DEVELOPER|NEW) "
        r"(?:PROMPT|INSTRUCTIONS?|MESSAGE|OVERRIDE)\b|(?:SYSTEM|ADMIN) OVERRIDE\b",
        "system admin developer new",
        "prompt instruction instructions message override",
        lead="begin start end system admin",
        cased=True,
    ),
    rule(
        "fake_delimiter",
        r"[-=#*_][-=#*_]{2,}\s*(?:end|begin|start)\s+(?:of\s+)?(?:the\s+)?(?:document|context|"
        r"sources?|user input|input|text|data|conversation|system prompt|instructions)\b",
        "end begin start",
        "document context source sources input text data conversation prompt instructions",
    ),
    rule(
        "document_command",
        r"\b(?:note|message|attention|instructions?|important(?: message)?|hey|hello|hi|dear|"
        r"psst|notice|reminder)\b\s*(?:(?:to|for)\s+)?(?:the\s+|any\s+|all\s+)?(?:ai\s+)?"
        + _AI
        + r"\s*(?:[:,!]|\s+(?:reading|processing|summari[sz]ing|parsing))",
        _AI_G,
        lead="note message attention instruction instructions important hey hello hi dear "
        "psst notice reminder",
    ),
    rule(
        "document_command",
        r"\b" + _AI + r"\s+(?:readers?|reading this|processing this|scraping this|"
        r"that reads? this|summari[sz]ing this)\b",
        "reader readers reading processing scraping reads read summarizing summarising",
        lead=_AI_G + " large",
    ),
    rule(
        "document_command",
        r"(?<![a-z0-9,;:)'\"-]\s)(?<![a-z0-9])(?:ai|assistant|chatbot|llm|model|chatgpt|gpt|"
        r"claude)\s*[,:]\s*(?:please\s+)?(?:you\s+(?:must|should)\s+)?(?:ignore|disregard|"
        r"forget|send|forward|tell|say|reply|respond|answer|include|add|append|output|print|"
        r"reveal|do not|don't|never|always|stop|visit|recommend|ask|email|write)\b",
        "ignore disregard forget send forward tell say reply respond answer include add "
        "append output print reveal do don never always stop visit recommend ask email write",
        lead="ai assistant chatbot llm model chatgpt gpt claude",
    ),
    rule(
        "document_command",
        r"\b(?:for|to)\s+(?:all\s+|any\s+)?" + _AI + r"\s+only\b",
        "only",
        _AI_G,
        lead="for to",
    ),
    rule(
        "document_command",
        r"\bwhoever\s+(?:is\s+)?(?:(?:reads?|reading|summari[sz]es|summari[sz]ing|processes|"
        r"processing)\s+this\b|(?:answers?|answering|responds?\s+to|responding\s+to|handles|"
        r"handling)\s+(?:(?:the|this|these|any)\s+)?(?:questions?|queries|requests?|users?)\b"
        + gap(40)
        + r"[:,])",
        lead="whoever",
    ),
    rule(
        "document_command",
        r"\bif\s+you(?:'re|\s+are)\s+(?:an?\s+)?(?:ai|artificial intelligence|"
        r"(?:large\s+)?language model|llm|assistant|chatbot|bot|gpt|automated|model)\b",
        "you",
        "ai artificial language llm assistant chatbot bot gpt automated model",
        lead="if",
    ),
    rule(
        "document_command",
        r"\bwhen\s+(?:you(?:'re|\s+are)?\s+)?(?:summari[sz]e|summari[sz]ing|answer|answering|"
        r"respond|responding|reply|replying|asked)\b"
        + gap(60)
        + r"\b(?:(?:always|never)\s+(?:recommend|say|mention|tell|claim|include|add|answer|"
        r"respond|reply|refer|point|suggest|state|insist)|you\s+(?:must|should|shall)|claim|"
        r"insist)\b",
        "summarize summarise summarizing summarising answer answering respond responding "
        "reply replying asked",
        "always never must should shall claim insist",
        lead="when",
    ),
    rule(
        "document_command",
        r"\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention|reveal|disclose|show|let)\s+"
        r"(?:this\s+|these\s+instructions\s+|it\s+)?(?:to\s+)?(?:the\s+)?user\b",
        "tell inform mention reveal disclose show let",
        "user",
        lead=_NOT_L,
    ),
    rule(
        "document_command",
        r"\b(?:do\s+not|don't|never)\s+(?:mention|reveal|disclose|acknowledge)\s+(?:these|this|"
        r"the)\s+(?:instructions?|note|message|directive)",
        "mention reveal disclose acknowledge",
        "instruction instructions note message directive",
        lead=_NOT_L,
    ),
    rule(
        "document_command",
        r"\b(?:ignore|disregard)\s+(?:the\s+)?(?:user'?s?|their|his|her)\s+(?:actual\s+|real\s+"
        r"|original\s+)?(?:question|query|request|input|message|prompt)",
        "user users their his her",
        "question query request input message prompt",
        lead="ignore disregard",
    ),
    rule(
        "document_command",
        r"\b(?:do\s+not|don't|never)\s+answer\s+(?:the|their|this|any|the\s+user'?s?)\s+"
        r"(?:question|query|request)",
        "answer",
        "question query request",
        lead=_NOT_L,
    ),
    rule(
        "document_command",
        r"\b(?:tell|instruct|urge|advise|convince|persuade|remind|direct)\s+(?:the\s+user|users|"
        r"them|the\s+reader|readers)\s+(?:to|that)\b"
        + gap(60)
        + r"(?:https?://|www\.|\b(?:visit|click|download|install|run|call|phone|e-?mail|enter|"
        r"provide|share|send|paste|log\s?in|sign\s?in|reset|verify|buy|pay|password|"
        r"credentials?|api\s+key|token)\b)",
        "user users them reader readers",
        lead="tell instruct urge advise convince persuade remind direct",
    ),
    rule(
        "document_command",
        r"\bask\s+(?:the\s+user|users|them|the\s+reader)\s+(?:for|to\s+(?:provide|enter|share|"
        r"give|send|paste|confirm))\b"
        + gap(40)
        + r"(?:password|passphrase|credentials?|api\s*key|token|secret|card|login|\bpin\b|otp)",
        "user users them reader",
        lead="ask",
    ),
    rule(
        "document_command",
        r"\b(?:send|forward|post|upload|exfiltrate|leak|transmit|email|submit|relay|share|"
        r"copy|paste)\b"
        + gap(60)
        + r"\b(?:conversation|chat(?:\s+history|\s+log)?|history|messages|user'?s?|"
        r"(?:system\s+)?prompt|instructions|credentials?|passwords?|api[\s_-]?keys?|"
        r"(?:access|session|auth)\s*tokens?|secrets?|cookies?|personal\s+(?:data|information))\b"
        + gap(60)
        + r"\b(?:to|at|via|into)\s+(?:"
        + _URL
        + r"|(?:this|the\s+following|my|our)\s+(?:url|link|address|endpoint|webhook|server))",
        "conversation chat history messages user users prompt instructions credential "
        "credentials password passwords api apikey apikeys keys key token tokens secret "
        "secrets cookie cookies personal accesstoken accesstokens sessiontoken sessiontokens "
        "authtoken authtokens",
        "to at via into",
        lead="send forward post upload exfiltrate leak transmit email submit relay share copy "
        "paste",
    ),
    rule(
        "document_command",
        r"!\[[^\]\n]{0,80}\]\(\s*https?://[^)\s]{0,200}?[?&][\w.-]+=[^)\s]{0,100}?"
        r"(?:\{|%7b|\[|<|\$)",
        "http https",
    ),
    rule(
        "document_command",
        r"\b(?:include|add|append|insert|embed|put|render|show|display|output|place)\s+"
        r"(?:this|the\s+following|these)\s+(?:\w+\s+)?(?:link|url|hyperlink|image|markdown|"
        r"tracking pixel|banner|ad|advert(?:isement)?)s?\b"
        + gap(60)
        + r"(?:https?://|www\.|\b(?:in|to|into|at\s+the\s+(?:end|start|top|bottom)\s+of)\s+"
        r"(?:your|the|every|each)\s+(?:answer|response|reply|output|summary|message)s?\b)",
        "this following these",
        "link links url urls hyperlink hyperlinks image images markdown markdowns pixel pixels "
        "banner banners ad ads advert adverts advertisement advertisements",
        lead="include add append insert embed put render show display output place",
    ),
    rule(
        "document_command",
        r"\b(?:correct|right|only|true|real|proper|official)\s+(?:answer|response|reply)\s+to\s+"
        r"(?:any|all)\s+(?:[\w-]+\s+){0,3}?(?:questions?|queries|requests?|prompts?)\s+"
        r"(?:is|are|will\s+be|should\s+be|must\s+be)\b",
        "answer response reply",
        "any all",
        "question questions queries request requests prompt prompts",
        lead="correct right only true real proper official",
    ),
    rule(
        "document_command",
        r"\balways\s+(?:recommend|suggest|promote|mention|advertise)\b" + gap(60) + _URL,
        "recommend suggest promote mention advertise",
        lead="always",
    ),
    rule(
        "document_command",
        r"(?:https?://|www\.)\S{0,80}"
        + gap(40)
        + r"\b(?:enter|type|provide|submit|paste)\s+(?:your|their)\s+(?:credentials|password|"
        r"api\s*key|login|token|card)",
        "enter type provide submit paste",
        "your their",
        "credentials password api apikey login token card",
    ),
    rule(
        "obfuscated",
        r"\b(?:decode|decipher|decrypt|unscramble|reverse|translate)\b"
        + gap(40)
        + r"\b(?:and|then)\s+(?:follow|obey|do\s+what\s+it\s+says|carry\s+out|comply|act\s+on)\b",
        "follow obey do carry comply act",
        lead="decode decipher decrypt unscramble reverse translate",
    ),
)
