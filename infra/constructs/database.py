"""VPC without NAT, RDS PostgreSQL 17 (pgvector >= 0.8), rotated credentials, optional RDS
Proxy, and the migrate custom resource that applies the schema on every deploy that changes it.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnResource, CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from artlens import names
from infra import packaging
from infra.constructs.lambda_defaults import (
    REPO_ROOT,
    create_function,
    runtime_layer,
    zip_code,
)
from infra.settings import DeploymentSettings

DB_NAME = "artlens"
DB_PORT = 5432
# The major version only: RDS retires minor versions (a pinned one that AWS has retired cannot
# be created), and auto_minor_version_upgrade keeps the instance on a supported 17.x. Every
# RDS for PostgreSQL 17 minor ships pgvector >= 0.8 (iterative index scans, which the store
# uses). pgvector needs no shared_preload_libraries entry: CREATE EXTENSION vector is enough.
ENGINE_MAJOR = "17"
ENGINE_VERSION = rds.PostgresEngineVersion.of(ENGINE_MAJOR, ENGINE_MAJOR)
# HNSW index builds (migrations, reindex) are fast only while the graph fits in
# maintenance_work_mem; RDS's default is about 1/16 of memory. A quarter of the instance's
# memory, as an RDS formula (DBInstanceClassMemory is in bytes, the parameter in kB), so it
# follows dbInstanceType: 256 MB on t4g.micro, 512 MB on t4g.small, 4 GB on a 16 GB class.
MAINTENANCE_WORK_MEM = "{DBInstanceClassMemory/4096}"
# shared_buffers stays at RDS's default, a quarter of memory ({DBInstanceClassMemory/32768}
# pages): k-NN latency depends on the HNSW graph staying in it (about 1.3 KiB per 256-d work;
# docs/operations.md, "The database at millions of works", picks the instance class).
# autovacuum_work_mem defaults to -1, i.e. maintenance_work_mem for EACH autovacuum worker (3):
# with a quarter of memory each, vacuums alone could take 3/4 of a small instance. PostgreSQL's
# own default, 64 MB (in kB), is plenty for this table.
AUTOVACUUM_WORK_MEM = "65536"
MIGRATIONS_DIR = REPO_ROOT / "layers" / "python" / "artlens" / "sql"


def migrations_fingerprint(directory: Path = MIGRATIONS_DIR) -> str:
    """Changes when a migration file does, so the custom resource re-runs (Update) then."""
    files = sorted(directory.glob("*.sql"))
    if not files:
        # A fingerprint of nothing would never change again: fail the synth instead.
        raise FileNotFoundError(f"no migrations (*.sql) in {directory}")
    return packaging.file_digest(files, directory)[:16]


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

        engine = rds.DatabaseInstanceEngine.postgres(version=ENGINE_VERSION)
        self.parameter_group = rds.ParameterGroup(
            self,
            "Parameters",
            engine=engine,
            description=f"ArtLens PostgreSQL {ENGINE_MAJOR} (HNSW index builds)",
            parameters={
                "maintenance_work_mem": MAINTENANCE_WORK_MEM,
                "autovacuum_work_mem": AUTOVACUUM_WORK_MEM,
            },
        )
        self.instance = rds.DatabaseInstance(
            self,
            "Postgres",
            engine=engine,
            parameter_group=self.parameter_group,
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
        # RDS accepts a major version alone ("defaults to a recent release of the major
        # version", RDS user guide); cfn-lint's data lists "17" among deprecated versions
        # (W3691), a false positive for this one resource.
        db_resource = self.instance.node.default_child
        assert isinstance(db_resource, CfnResource)
        db_resource.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3691"]}})
        assert self.instance.secret is not None
        self.secret: secretsmanager.ISecret = self.instance.secret
        # The generated secret is the only way into a database restored from prod's final
        # snapshot: keep it as the snapshot is kept.
        generated_secret = self.instance.node.find_child("Secret")
        generated_secret.node.default_child.apply_removal_policy(  # type: ignore[union-attr]
            RemovalPolicy.RETAIN if prod else RemovalPolicy.DESTROY
        )

        # Rotation by the Secrets Manager-hosted rotation function (no code of ours); it runs
        # in the isolated subnets and reaches Secrets Manager through the interface endpoint.
        self.rotation = self.secret.add_rotation_schedule(
            "Rotation",
            hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                vpc=self.vpc, vpc_subnets=isolated, security_groups=[rotation_security_group]
            ),
            automatically_after=Duration.days(30),
            # The password was generated by this same deploy: rotating it at once would only
            # race the schema migration and the new functions' first connections.
            rotate_immediately_on_update=False,
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
        # Order (issue 12): instance and its credentials -> schema -> rotation. The schema must
        # not wait for the rotation schedule (which rotates at once when created: the password
        # would change under a running migrate), and rotation starts only once the schema is
        # in. Dependencies on the two resources only, not on the instance construct, whose
        # subtree holds the rotation schedule.
        for resource in (self.instance.node.default_child, self.secret.node.default_child):
            assert isinstance(resource, CfnResource)
            self.migration.node.add_dependency(resource)
        self.rotation.node.add_dependency(self.migration)
        self.migrate_function = migrate

    def connection_environment(self) -> dict[str, str]:
        """The variables artlens.settings reads for the [database] part."""
        return {
            names.ENV_DB_SECRET_ARN: self.secret.secret_arn,
            names.ENV_DB_HOST: self.host,
            names.ENV_DB_PORT: str(DB_PORT),
            names.ENV_DB_NAME: DB_NAME,
        }

    def grant_connect(self, function) -> None:
        """Read the credentials (nothing else in Secrets Manager)."""
        self.secret.grant_read(function)
