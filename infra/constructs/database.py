"""VPC without NAT, RDS PostgreSQL 17 (pgvector >= 0.8), rotated credentials, optional RDS
Proxy, and the migrate custom resource that applies the schema on every deploy that changes it.
"""

from __future__ import annotations

import hashlib

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra.constructs.lambda_defaults import (
    REPO_ROOT,
    create_function,
    runtime_layer,
    zip_code,
)
from infra.settings import DeploymentSettings

DB_NAME = "artlens"
DB_PORT = 5432
# RDS for PostgreSQL 17.x ships pgvector 0.8.x (iterative index scans, which the store uses).
ENGINE_VERSION = rds.PostgresEngineVersion.VER_17_5
MIGRATIONS_DIR = REPO_ROOT / "layers" / "python" / "artlens" / "sql"


def migrations_fingerprint() -> str:
    """Changes when a migration file does, so the custom resource re-runs (Update) then."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Database(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings):
        super().__init__(scope, construct_id)
        prod = settings.is_prod

        # Isolated subnets only: the functions reach AWS through endpoints, so no NAT gateway
        # (cost, and no route to the internet from anything holding database credentials).
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                )
            ],
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs)
        )
        isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)

        # Functions that talk to the database join this group; only it may reach port 5432.
        self.client_security_group = ec2.SecurityGroup(
            self,
            "ClientSecurityGroup",
            vpc=self.vpc,
            description="ArtLens functions that use the database",
            allow_all_outbound=True,
        )
        rotation_security_group = ec2.SecurityGroup(
            self,
            "RotationSecurityGroup",
            vpc=self.vpc,
            description="Secrets Manager hosted rotation for the ArtLens database secret",
            allow_all_outbound=True,
        )
        # Endpoints accept HTTPS from our functions and the rotation function only.
        for name, service in (
            ("SecretsManager", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
            ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
        ):
            endpoint = self.vpc.add_interface_endpoint(
                name, service=service, subnets=isolated, private_dns_enabled=True, open=False
            )
            for peer in (self.client_security_group, rotation_security_group):
                endpoint.connections.allow_default_port_from(peer, "HTTPS to the endpoint")
        db_security_group = ec2.SecurityGroup(
            self,
            "DbSecurityGroup",
            vpc=self.vpc,
            description="ArtLens PostgreSQL",
            allow_all_outbound=False,
        )

        self.instance = rds.DatabaseInstance(
            self,
            "Postgres",
            engine=rds.DatabaseInstanceEngine.postgres(version=ENGINE_VERSION),
            instance_type=ec2.InstanceType(settings.db_instance_type),
            vpc=self.vpc,
            vpc_subnets=isolated,
            security_groups=[db_security_group],
            port=DB_PORT,
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret("artlens_admin"),
            storage_encrypted=True,
            publicly_accessible=False,
            multi_az=settings.db_multi_az,
            allocated_storage=settings.db_allocated_storage_gb,
            max_allocated_storage=settings.db_allocated_storage_gb * 4,
            storage_type=rds.StorageType.GP3,
            backup_retention=Duration.days(7 if prod else 1),
            deletion_protection=prod,
            removal_policy=RemovalPolicy.SNAPSHOT if prod else RemovalPolicy.DESTROY,
            delete_automated_backups=not prod,
            cloudwatch_logs_exports=["postgresql"],
            cloudwatch_logs_retention=logs.RetentionDays.ONE_MONTH,
            iam_authentication=True,
            auto_minor_version_upgrade=True,
            enable_performance_insights=False,
            monitoring_interval=Duration.seconds(0),
        )
        assert self.instance.secret is not None
        self.secret: secretsmanager.ISecret = self.instance.secret

        # Rotation by the Secrets Manager-hosted rotation function (no code of ours); it runs
        # in the isolated subnets and reaches Secrets Manager through the interface endpoint.
        self.secret.add_rotation_schedule(
            "Rotation",
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                vpc=self.vpc, vpc_subnets=isolated, security_groups=[rotation_security_group]
            ),
            automatically_after=Duration.days(30),
        )
        for peer, why in (
            (self.client_security_group, "ArtLens functions"),
            (rotation_security_group, "credential rotation"),
        ):
            db_security_group.add_ingress_rule(peer, ec2.Port.tcp(DB_PORT), f"PostgreSQL: {why}")

        self.host = self.instance.db_instance_endpoint_address
        self.proxy: rds.DatabaseProxy | None = None
        if settings.db_use_proxy:
            proxy_security_group = ec2.SecurityGroup(
                self,
                "ProxySecurityGroup",
                vpc=self.vpc,
                description="ArtLens RDS Proxy",
                allow_all_outbound=False,
            )
            proxy_security_group.add_ingress_rule(
                self.client_security_group, ec2.Port.tcp(DB_PORT), "PostgreSQL via proxy"
            )
            proxy_security_group.add_egress_rule(
                db_security_group, ec2.Port.tcp(DB_PORT), "proxy to PostgreSQL"
            )
            db_security_group.add_ingress_rule(
                proxy_security_group, ec2.Port.tcp(DB_PORT), "PostgreSQL: RDS Proxy"
            )
            self.proxy = self.instance.add_proxy(
                "Proxy",
                secrets=[self.secret],
                vpc=self.vpc,
                vpc_subnets=isolated,
                security_groups=[proxy_security_group],
                require_tls=True,
            )
            self.host = self.proxy.endpoint

        # Schema: the migrate handler through the Provider framework. It is a zip function
        # with the runtime layer; it is in the VPC, in the client group.
        migrate = create_function(
            self,
            "MigrateFunction",
            settings,
            code=zip_code(),
            handler="migrate.handler",
            layers=[runtime_layer(self, settings)],
            service="artlens-migrate",
            memory_mb=256,
            timeout=Duration.minutes(5),
            environment=self.connection_environment(),
            vpc=self.vpc,
            security_groups=[self.client_security_group],
            description="ArtLens: apply the index schema (custom resource)",
        )
        self.grant_connect(migrate)
        provider = cr.Provider(
            self,
            "MigrateProvider",
            on_event_handler=migrate,
            log_group=logs.LogGroup(
                self,
                "MigrateProviderLogs",
                retention=logs.RetentionDays.ONE_MONTH,
                removal_policy=RemovalPolicy.DESTROY,
            ),
        )
        self.migration = CustomResource(
            self,
            "Schema",
            service_token=provider.service_token,
            properties={"MigrationsFingerprint": migrations_fingerprint()},
        )
        self.migration.node.add_dependency(self.instance)
        self.migrate_function = migrate

    def connection_environment(self) -> dict[str, str]:
        """The variables artlens.settings reads for the [database] part."""
        return {
            "DB_SECRET_ARN": self.secret.secret_arn,
            "DB_HOST": self.host,
            "DB_PORT": str(DB_PORT),
            "DB_NAME": DB_NAME,
        }

    def grant_connect(self, function) -> None:
        """Read the credentials (nothing else in Secrets Manager)."""
        self.secret.grant_read(function)
