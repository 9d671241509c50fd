"""The prompt-injection rules: one family name and one regex each, with the words that gate
it (services/guardrails/injection.py runs them; its docstring says what each family
catches and how well). Patterns run over the lowercased text unless `cased`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A regex over the lowercased text (over the text as written if `cased`), run only when
    the text has a word of each gate, and, with `lead`, matched only where a lead word (a
    word a match starts with) occurs."""

    family: str
    pattern: re.Pattern[str]
    gates: tuple[frozenset[str], ...]
    lead: frozenset[str]
    cased: bool


def rule(family: str, pattern: str, *gates: str, lead: str = "", cased: bool = False) -> Rule:
    words = tuple(frozenset(g.split()) for g in (*gates, lead) if g)
    return Rule(family, re.compile(pattern), words, frozenset(lead.split()), cased)


def gap(most: int) -> str:
    """Up to `most` characters, none of which ends a sentence."""
    return rf"[^.!?\n]{{0,{most}}}?"


_OVERRIDE = (
    r"\b(?:ignore|ignoring|disregard|disregarding|forget|forgetting|skip|bypass|override|"
    r"overrule|overlook|neglect|abandon|discard|circumvent|set aside|put aside|"
    r"pay no (?:attention|heed|mind) to|stop (?:following|obeying)|"
    r"(?:do not|don't|no longer) (?:follow|obey|adhere to|comply with))\b"
)
_OVERRIDE_G = (
    "ignore ignoring disregard disregarding forget forgetting skip bypass override overrule "
    "overlook neglect abandon discard circumvent aside attention heed mind following obeying "
    "follow obey adhere comply"
)
_OVERRIDE_L = (
    "ignore ignoring disregard disregarding forget forgetting skip bypass override overrule "
    "overlook neglect abandon discard circumvent set put pay stop do don no"
)
_QUALIFIER = (
    r"\b(?:previous|previously|prior|above|earlier|preceding|foregoing|former|original|"
    r"initial|your|system|safety|ethical|moral|content|developer(?:s|'s|s')?|programmed|hidden)\b"
)
_QUALIFIER_G = (
    "previous previously prior above earlier preceding foregoing former original initial "
    "your system safety ethical moral content developer developers programmed hidden"
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
        _OVERRIDE + r"\s+(?:all|everything|anything)\s+(?:that\s+)?"
        r"(?:you(?:'ve| have)?(?: been| were)?|i(?:'ve| have)?)\s+(?:told|said|given)\b",
        _OVERRIDE_G,
        "all everything anything",
        "told said given",
        lead=_OVERRIDE_L,
    ),
    rule(
        "override_instructions",
        _OVERRIDE + r"\s+(?:all\s+|everything\s+)?(?:(?:of\s+)?(?:the|this|that)\s+)?"
        r"(?:(?:text|content|stuff|prompt|message)\s+)?(?:above|before)\b"
        r"(?!\s+(?:line|a|the|\d)\b)",
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
        "prompt_exfiltration",
        _SHOW
        + gap(30)
        + rf"\b(?:your\s+(?:{_SECRET}\s+){{0,3}}(?:system\s+)?{_PROMPT_N}"
        + rf"|(?:the|its)\s+(?:{_SECRET}\s+){{1,3}}(?:system\s+)?{_PROMPT_N}"
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
    rule("role_hijack", r"\bDAN\b", lead="dan", cased=True),
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
        r"opposite)\s+mode\b",
        "mode",
        _MODES_G,
        lead="you assistant ai model chatbot chatgpt gpt llm",
    ),
    rule(
        "role_hijack",
        rf"\b{_MODES}\s+mode\b"
        + gap(40)
        + r"\b(?:you (?:will |must |can |should |now )?(?:answer|respond|reply|ignore|say|"
        r"output|generate|have no)|respond|answer|reply)\b",
        "mode",
        "you respond answer reply",
        lead="developer god admin sudo unrestricted unfiltered jailbreak dan evil chaos",
    ),
    rule(
        "role_hijack",
        r"\b(?:jailbreak|unrestricted|unfiltered|uncensored|evil|chaos)\s+mode\b",
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
        r"task|policy|prompt)(?:\s+for\s+(?:the\s+)?(?:assistant|ai|model|llm|chatbot|you))?\s*:",
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
        r"|behave)\b)",
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
        r"(?:fake|wrong|void|null|outdated|cancell?ed|obsolete|test|joke|mistake|invalid|false|"
        r"revoked|deprecated|no longer valid)\b",
        "fake wrong void null outdated canceled cancelled obsolete test joke mistake invalid "
        "false revoked deprecated valid",
        lead="above previous prior preceding earlier original old",
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
        r"|\n[ \t]*(?:system|assistant)[ \t]*(?:prompt|message)?[ \t]*:",
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
        r"\bwhoever\s+(?:is\s+)?(?:reads?|reading|summari[sz]es|summari[sz]ing|processes|"
        r"processing)\s+this\b",
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
