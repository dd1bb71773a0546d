from django.shortcuts import render


def index(request, workspace_slug):
    return render(request, "segments/index.html", {"section": "segments"})
