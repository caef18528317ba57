"""Password generation with the policy knobs of AWS's own rotation functions.

AWS's functions call the GetRandomPassword API (one more network round trip per rotation); we draw from the
operating system's CSPRNG locally with the same variables and defaults, so a migration keeps its policy.
"""

from __future__ import annotations

import math
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass

from rotation.exceptions import ConfigurationError

# The characters GetRandomPassword treats as punctuation.
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# AWS's default: characters that break connection strings, URLs and shell quoting.
DEFAULT_EXCLUDE_CHARACTERS = ":/@\"'\\"
DEFAULT_LENGTH = 32
MAX_LENGTH = 4096
#: Below this a password could be guessed offline from a leaked verifier or log; AWS's default policy gives ~206.
MIN_ENTROPY_BITS = 96

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    length: int = DEFAULT_LENGTH
    exclude_characters: str = DEFAULT_EXCLUDE_CHARACTERS
    exclude_numbers: bool = False
    exclude_punctuation: bool = False
    exclude_uppercase: bool = False
    exclude_lowercase: bool = False
    require_each_included_type: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PasswordPolicy:
        raw_length = env.get("PASSWORD_LENGTH", str(DEFAULT_LENGTH)).strip()
        try:
            length = int(raw_length)
        except ValueError:
            raise ConfigurationError(f"PASSWORD_LENGTH must be a whole number, got {raw_length!r}") from None
        policy = cls(
            length=length,
            exclude_characters=env.get("EXCLUDE_CHARACTERS", DEFAULT_EXCLUDE_CHARACTERS),
            exclude_numbers=parse_bool("EXCLUDE_NUMBERS", env.get("EXCLUDE_NUMBERS"), False),
            exclude_punctuation=parse_bool("EXCLUDE_PUNCTUATION", env.get("EXCLUDE_PUNCTUATION"), False),
            exclude_uppercase=parse_bool("EXCLUDE_UPPERCASE", env.get("EXCLUDE_UPPERCASE"), False),
            exclude_lowercase=parse_bool("EXCLUDE_LOWERCASE", env.get("EXCLUDE_LOWERCASE"), False),
            require_each_included_type=parse_bool(
                "REQUIRE_EACH_INCLUDED_TYPE", env.get("REQUIRE_EACH_INCLUDED_TYPE"), True
            ),
        )
        policy.check_strength()  # validate eagerly: a bad policy should fail before any step runs
        return policy

    def check_strength(self) -> None:
        """Refuse a policy that cannot produce passwords, or only guessable ones."""
        alphabet = len(set("".join(self.character_classes())))
        bits = self.length * math.log2(alphabet) if alphabet > 1 else 0.0
        if bits < MIN_ENTROPY_BITS:
            raise ConfigurationError(
                f"the password policy gives {bits:.0f} bits of entropy ({self.length} characters from {alphabet}), "
                f"fewer than {MIN_ENTROPY_BITS}: raise PASSWORD_LENGTH or relax EXCLUDE_CHARACTERS / EXCLUDE_*"
            )

    def character_classes(self) -> list[str]:
        if not 1 <= self.length <= MAX_LENGTH:
            raise ConfigurationError(f"PASSWORD_LENGTH must be between 1 and {MAX_LENGTH}, got {self.length}")
        wanted = [
            (self.exclude_lowercase, string.ascii_lowercase),
            (self.exclude_uppercase, string.ascii_uppercase),
            (self.exclude_numbers, string.digits),
            (self.exclude_punctuation, PUNCTUATION),
        ]
        classes = []
        for excluded, chars in wanted:
            if excluded:
                continue
            usable = "".join(c for c in chars if c not in self.exclude_characters)
            if usable:
                classes.append(usable)
        if not classes:
            raise ConfigurationError("the password policy excludes every character; relax EXCLUDE_* settings")
        if self.require_each_included_type and self.length < len(classes):
            raise ConfigurationError(
                f"PASSWORD_LENGTH {self.length} is shorter than the {len(classes)} character types "
                "REQUIRE_EACH_INCLUDED_TYPE asks for"
            )
        return classes

    def generate(self) -> str:
        classes = self.character_classes()
        alphabet = "".join(classes)
        chars = [secrets.choice(alphabet) for _ in range(self.length)]
        if self.require_each_included_type:
            # Overwrite distinct random positions so each class appears at least once without biasing
            # which position holds it.
            positions = list(range(self.length))
            secrets.SystemRandom().shuffle(positions)
            for position, chars_of_class in zip(positions, classes, strict=False):
                chars[position] = secrets.choice(chars_of_class)
        return "".join(chars)
