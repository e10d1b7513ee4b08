"""What a policy notice would do, shown before anything is sent: the email as a sample
reader gets it in each language, who receives it and why, and who not and why (§1.4).

Works for a version not published yet (the console shows it before the publish button,
``POST /v1/policies/preview`` answers it) as well as for a published one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from notify import audience, i18n, mail
from notify.campaigns import DEFAULT_TEMPLATE, sample_email
from notify.eligibility import NOTICE_TOPIC, POLICY_NOTICE
from notify.models import Campaign, PolicyVersion
from notify.settings import Channel, Settings


@dataclass
class Sample:
    locale: str
    subject: str
    text: str
    html: str


@dataclass
class NoticePreview:
    policy: PolicyVersion
    audience: audience.Audience
    samples: list[Sample]

    @property
    def who(self) -> str:
        """Who receives it, in plain words."""
        if self.policy.material:
            return ("Everyone with a deliverable email address: the change affects users' "
                    "rights, so their topic consents do not matter (§1.4). Left out are "
                    "erased users, users without a verified address, suppressed addresses "
                    "and users already told about this version.")
        return ("Only subscribers of email notifications: the change does not affect users' "
                "rights. Left out are erased users, users without a verified address, "
                "suppressed addresses, users not subscribed to email notifications and users "
                "already told about this version.")


def unsaved_policy(values: Mapping[str, Any]) -> PolicyVersion:
    """A policy version as it would be published, not saved."""
    return PolicyVersion(**values, published_by="preview")


async def preview(settings: Settings, policy: PolicyVersion) -> NoticePreview:
    campaign = Campaign(name="preview", kind=POLICY_NOTICE, channels=[Channel.EMAIL.value],
                        audience={}, template=DEFAULT_TEMPLATE[POLICY_NOTICE])
    [found] = await audience.preview(campaign, {Channel.EMAIL.value: NOTICE_TOPIC},
                                     policy=policy)
    samples = []
    # English first: the language the product team reads; then the others.
    for locale in sorted(i18n.catalogs(), key=lambda name: (name != "en", name)):
        email = sample_email(settings, campaign.template, {}, policy, locale)
        subject, text, html = mail.render(email, settings)
        samples.append(Sample(locale, subject, text, html))
    return NoticePreview(policy, found, samples)
