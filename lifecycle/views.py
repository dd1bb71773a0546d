from django.shortcuts import render


def index(request, workspace_slug):
    return render(request, "lifecycle/index.html", {"section": "lifecycle"})
