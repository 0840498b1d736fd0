from rest_framework.views import APIView


class AuditEventListApi(APIView):
    pass
