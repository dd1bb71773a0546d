from django.shortcuts import render


def index(request, workspace_slug):
    return render(request, "campaigns/index.html", {"section": "campaigns"})
