"""The Settings section: one row of tabs leads an admin to every workspace setting."""

import re

import pytest

from crm_site.models import Role

pytestmark = pytest.mark.django_db

TABS = ["Workspace", "Members", "API keys", "Lifecycle", "Sending"]


def test_every_settings_tab_opens_for_an_admin(member_client, workspace):
    client = member_client(Role.ADMIN)
    page = client.get(f"/w/{workspace.slug}/settings/").content.decode()
    links = dict((label, href) for href, label in re.findall(r'class="nav-link[^"]*" href="([^"]+)">([^<]+)</a>', page))
    assert [label for label in TABS if label in links] == TABS
    for label in TABS:
        response = client.get(links[label])
        assert response.status_code == 200, label
        assert re.search(rf'nav-link active" href="{re.escape(links[label])}">{label}<', response.content.decode()), label
