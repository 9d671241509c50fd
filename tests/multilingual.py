"""Sentences in scripts with and without spaces, shared by the chunking tests (unit and
integration): Chinese, Japanese, Thai, and a mix of scripts and emoji."""

# ruff: noqa: RUF001  (the fullwidth punctuation of Chinese and Japanese is the point)

FACT = "The Zorblax reactor was commissioned in Lisbon in 1987."
ZH = [
    "长江是中国最长的河流，全长约六千三百公里，流经十一个省级行政区。",
    "黄河被称为中华民族的母亲河，它孕育了古老的华夏文明！",
    "你知道泰山为什么被称为五岳之首吗？",
    "唐朝是中国历史上最繁荣的朝代之一，首都长安是当时世界上最大的城市。",
    "宋代的活字印刷术大大提高了书籍的生产效率。",
]
JA = [
    "富士山は日本で一番高い山です。",
    "京都には千年以上の歴史を持つ寺院がたくさんあります！",
    "新幹線はどのくらい速いのでしょうか？",
    "桜の季節になると、多くの人々が公園で花見を楽しみます。",
]
TH = [
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "แม่น้ำเจ้าพระยาไหลผ่านใจกลางเมือง",
    "อาหารไทยมีชื่อเสียงไปทั่วโลก",
]
MIXED = [
    "The tokenizer reads 中文 and English alike.",
    "हिन्दी में वाक्य यहाँ समाप्त होता है।",
    "هل هذا سؤال؟",
    "Émile a vu 👨‍👩‍👧 et 🇫🇷 à Paris.",
    "混合テキストです。",
]
