"""Public endpoints of campaigns, without login: tracked clicks, the open pixel, inbound webhooks.

Each is authorised by a signed token in its URL (campaigns.tracking, campaigns.webhooks); a bad token is a
404 (clicks, opens) or a 403 JSON answer (webhooks), never a 500.
"""

from __future__ import annotations

import base64
import json

from django.http import Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from campaigns import tracking, webhooks
from campaigns.models import Message, MessageEvent
from crm_site.models import Workspace
from crm_site.tenancy import tenant_scope

PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _record(tenant_id: int, message_id: int, kind: str, url: str = "") -> None:
    with tenant_scope(tenant_id):
        message = Message.objects.filter(pk=message_id).select_related("campaign").first()
        if message is not None:
            tracking.record_event(message, kind, url=url)


@require_GET
@never_cache
def click(request, token):
    """Record a click and redirect to the link's destination (only ever a URL we signed)."""
    try:
        tenant_id, message_id, url = tracking.read_click_token(token)
    except tracking.BadToken:
        raise Http404("Unknown link") from None
    _record(tenant_id, message_id, MessageEvent.Kind.CLICKED, url)
    return HttpResponseRedirect(url)


@require_GET
@never_cache
def open_pixel(request, token):
    """Record an open and answer with a transparent 1x1 GIF."""
    try:
        tenant_id, message_id = tracking.read_open_token(token)
    except tracking.BadToken:
        raise Http404("Unknown pixel") from None
    _record(tenant_id, message_id, MessageEvent.Kind.OPENED)
    return HttpResponse(PIXEL_GIF, content_type="image/gif")


def _workspace_for(token: str) -> Workspace | None:
    tenant_id = webhooks.read_inbound_token(token)
    if tenant_id is None:
        return None
    return Workspace.objects.filter(pk=tenant_id, is_active=True).first()


def _payload(request) -> dict:
    """Read a webhook body: JSON, or form fields (Twilio-style From/To/Body)."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}
    return {key.lower(): value for key, value in request.POST.items()}


@csrf_exempt
@require_POST
def inbound_sms(request, token):
    """Inbound SMS webhook: STOP / START / HELP keywords change consent; other texts are replies."""
    workspace = _workspace_for(token)
    if workspace is None:
        return JsonResponse({"error": "unknown webhook token"}, status=403)
    data = _payload(request)
    sender, body = str(data.get("from") or ""), str(data.get("body") or data.get("text") or "")
    if not sender:
        return JsonResponse({"error": "'from' (the sender's number) is required"}, status=400)
    result = webhooks.handle_inbound_sms(workspace, sender, body[:2000])
    return JsonResponse({"action": result.action, "reply": result.reply})


@csrf_exempt
@require_POST
def inbound_email_reply(request, token):
    """E-mail reply webhook (JSON: from, subject, text, in_reply_to): the reply lands on the timeline."""
    workspace = _workspace_for(token)
    if workspace is None:
        return JsonResponse({"error": "unknown webhook token"}, status=403)
    data = _payload(request)
    sender = str(data.get("from") or "")
    if "@" not in sender:
        return JsonResponse({"error": "'from' (the sender's e-mail address) is required"}, status=400)
    result = webhooks.handle_email_reply(
        workspace, sender, str(data.get("text") or "")[:10000], subject=str(data.get("subject") or "")[:300],
        in_reply_to=str(data.get("in_reply_to") or ""),
    )
    return JsonResponse({"action": result.action})
