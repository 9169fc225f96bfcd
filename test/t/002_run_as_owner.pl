# Copyright (c) 2026, the asyncjobs authors
#
# Jobs run as the role that enqueued them (DESIGN sections 4 and 9): the
# job sees that role as current_user, gets that role's privileges only,
# and cannot climb to the superuser the worker connects as, neither with
# SET ROLE nor with SET SESSION AUTHORIZATION.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('owner', max_workers => 2);
my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

$node->safe_psql(
	'postgres', qq{
	CREATE ROLE app LOGIN NOSUPERUSER;
	CREATE SCHEMA app AUTHORIZATION app;
	-- what a job saw, written by the job itself
	CREATE TABLE public.seen (
		k text PRIMARY KEY,
		job bigint,
		cur_user text,
		is_super boolean,
		can_create_role boolean,
		search_path text);
	GRANT INSERT, SELECT ON public.seen TO app;
	-- a table app may not read
	CREATE TABLE public.secret (x int);
	INSERT INTO public.secret VALUES (1);
});

# app writes its own handler; it runs with app's rights because the job
# runs as app (the function is not SECURITY DEFINER).
$node->psql_as(
	'app', 'postgres', qq{
	CREATE FUNCTION app.whoami(data jsonb) RETURNS void
	LANGUAGE plpgsql AS \$\$
	BEGIN
		INSERT INTO public.seen
		SELECT data->>'k', asyncjobs.current_job(), current_user,
		       r.rolsuper, r.rolcreaterole, current_setting('search_path')
		  FROM pg_roles r WHERE r.rolname = current_user;
	END
	\$\$;
	CREATE FUNCTION app.become_superuser(data jsonb) RETURNS void
	LANGUAGE plpgsql AS \$\$
	BEGIN
		PERFORM set_config('role', '$superuser', false);
		INSERT INTO public.seen (k, cur_user) VALUES (data->>'k', current_user);
	END
	\$\$;
	SELECT asyncjobs.register_operation('whoami', 'app.whoami(jsonb)');
	SELECT asyncjobs.register_operation('become_superuser',
	                                    'app.become_superuser(jsonb)',
	                                    max_retries => 0);
});

my %job;
$job{whoami} = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue('whoami', '{"k": "whoami"}')});
$job{handler_set_role} = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue('become_superuser', '{"k": "handler_set_role"}')});
$job{sql_set_role} = $node->psql_as('app', 'postgres',
	qq{SELECT asyncjobs.enqueue_sql(
		'SET ROLE $superuser; INSERT INTO public.seen (k, cur_user) VALUES (''sql_set_role'', current_user)',
		max_retries => 0)});
$job{sql_session_auth} = $node->psql_as('app', 'postgres',
	qq{SELECT asyncjobs.enqueue_sql(
		'SET SESSION AUTHORIZATION $superuser; INSERT INTO public.seen (k, cur_user) VALUES (''sql_session_auth'', current_user)',
		max_retries => 0)});
$job{sql_secret} = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'INSERT INTO public.seen (k, cur_user) SELECT ''sql_secret'', x::text FROM public.secret',
		max_retries => 0)});
# nor by forging a job that another role owns
$job{sql_forge} = $node->psql_as('app', 'postgres',
	qq{SELECT asyncjobs.enqueue_sql(
		'UPDATE asyncjobs.job SET ownerid = ''$superuser''::regrole',
		max_retries => 0)});
$job{sql_internal_fn} = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'SELECT asyncjobs._requeue_orphans()', max_retries => 0)});
$job{sql_whoami} = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'INSERT INTO public.seen (k, job, cur_user) VALUES (''sql_whoami'', asyncjobs.current_job(), current_user)')});
# the superuser's own job runs as the superuser, in the same pool
$job{super_whoami} = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'INSERT INTO public.seen (k, job, cur_user) VALUES (''super_whoami'', asyncjobs.current_job(), current_user)')});

for my $k (sort keys %job)
{
	like($job{$k}, qr/^\d+$/, "job $k was enqueued");
	ok(defined $node->wait_for_job('postgres', $job{$k}),
		"job $k completed");
}

# the owner is recorded
for my $k (grep { $_ ne 'super_whoami' } sort keys %job)
{
	is($node->job('postgres', $job{$k})->{ownerid},
		'app', "job $k is owned by app");
}
is($node->job('postgres', $job{super_whoami})->{ownerid},
	$superuser, 'the superuser\'s job is owned by the superuser');

# the handler ran as app, with app's attributes
is($node->job('postgres', $job{whoami})->{statuscode}, 30, 'whoami succeeded');
is( $node->safe_psql(
		'postgres',
		"SELECT job || '|' || cur_user || '|' || is_super || '|' || can_create_role
		   FROM seen WHERE k = 'whoami'"),
	"$job{whoami}|app|false|false",
	'the handler job ran as app, not a superuser');
is($node->job('postgres', $job{sql_whoami})->{statuscode}, 30,
	'SQL whoami succeeded');
is( $node->safe_psql('postgres',
		"SELECT job || '|' || cur_user FROM seen WHERE k = 'sql_whoami'"),
	"$job{sql_whoami}|app",
	'the SQL job ran as app');
is( $node->safe_psql('postgres',
		"SELECT job || '|' || cur_user FROM seen WHERE k = 'super_whoami'"),
	"$job{super_whoami}|$superuser",
	'the superuser\'s job ran as the superuser');

# no way up
for my $k (qw(handler_set_role sql_set_role sql_session_auth sql_forge
	sql_internal_fn))
{
	my $j = $node->job('postgres', $job{$k});
	is($j->{statuscode}, 31, "job $k ended Failed");
	is($j->{errorcode}, '42501',
		"job $k failed with insufficient_privilege");
	is($j->{retrycount}, 0, "job $k was not retried");
	is( $node->safe_psql('postgres', "SELECT count(*) FROM seen WHERE k = '$k'"),
		'0', "nothing job $k did after the attempt survived");
	note("$k: $j->{message}");
}

# app's privileges, not the worker's
my $j = $node->job('postgres', $job{sql_secret});
is($j->{statuscode}, 31,      'job reading a table app may not read failed');
is($j->{errorcode},  '42501', '... with insufficient_privilege');
like($j->{message}, qr/permission denied for table secret/,
	'... and says so');
is($node->safe_psql('postgres', "SELECT count(*) FROM seen WHERE k = 'sql_secret'"),
	'0', '... and wrote nothing');

# a job enqueued by a job belongs to the same role, not to the worker
my $parent = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue_sql(
		'SELECT asyncjobs.enqueue_sql(''INSERT INTO public.seen (k, job, cur_user) VALUES (''''child'''', asyncjobs.current_job(), current_user)'')')});
is($node->wait_for_job('postgres', $parent), 30, 'the parent job succeeded');
ok($node->poll_until('postgres', "SELECT count(*) FROM seen WHERE k = 'child'", '1', 10),
	'the child job ran');
my $child = $node->safe_psql('postgres', "SELECT job FROM seen WHERE k = 'child'");
$j = $node->job('postgres', $child);
is($j->{ownerid},  'app',   'the child job is owned by app');
is($j->{parentid}, $parent, 'the child job names its parent');
is($j->{depth},    2,       'the child job has depth 2');
is($node->safe_psql('postgres', "SELECT cur_user FROM seen WHERE k = 'child'"),
	'app', 'the child job ran as app');

# the worker itself is unchanged: the next job of app still runs as app
my $again = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue('whoami', '{"k": "whoami_again"}')});
is($node->wait_for_job('postgres', $again), 30, 'a later app job succeeds');
is( $node->safe_psql('postgres',
		"SELECT cur_user || '|' || is_super FROM seen WHERE k = 'whoami_again'"),
	'app|false',
	'and still runs as app after the failed attempts to climb');

# A handler the job's owner may no longer execute when the job runs (it
# could at its enqueue, which checks): the job fails, as a statement
# calling the handler would; a job of the same operation whose owner may
# execute it runs, and returns the handler's result.
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION public.private_handler(data jsonb) RETURNS jsonb
	LANGUAGE sql AS $$ SELECT jsonb_build_object('ran_as', current_user::text) $$;
	REVOKE EXECUTE ON FUNCTION public.private_handler(jsonb) FROM PUBLIC;
	GRANT EXECUTE ON FUNCTION public.private_handler(jsonb) TO app;
	SELECT asyncjobs.register_operation('private', 'public.private_handler(jsonb)',
	                                    max_retries => 0);
	SELECT asyncjobs.pause_operation('private');
});
my $private = $node->psql_as('app', 'postgres',
	q{SELECT asyncjobs.enqueue('private', '{}')});
my $allowed = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('private', '{}')});
$node->safe_psql(
	'postgres', q{
	REVOKE EXECUTE ON FUNCTION public.private_handler(jsonb) FROM app;
	SELECT asyncjobs.resume_operation('private');
});
is($node->wait_for_job('postgres', $private),
	31, "a job whose handler its owner may no longer execute fails");
$j = $node->job('postgres', $private);
is($j->{errorcode}, '42501', '... with insufficient_privilege');
like($j->{message}, qr/permission denied for function private_handler/,
	'... naming the handler');
is($node->wait_for_job('postgres', $allowed), 30, "the superuser's job of it succeeds");
is( $node->safe_psql(
		'postgres',
		"SELECT result->>'ran_as' FROM asyncjobs.asyncoperation WHERE asyncoperationid = $allowed"),
	$superuser,
	'... with the result of the handler, run as its owner');

$node->stop;
done_testing();
