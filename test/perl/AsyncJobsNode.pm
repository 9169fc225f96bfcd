# Copyright (c) 2026, the asyncjobs authors

=pod

=head1 NAME

AsyncJobsNode - a PostgreSQL::Test::Cluster node with asyncjobs preloaded

=head1 SYNOPSIS

  use AsyncJobsNode;

  my $node = AsyncJobsNode->new_node('main', max_workers => 2);
  my $id = $node->safe_psql('postgres',
      q{SELECT asyncjobs.enqueue_sql('SELECT 1')});
  is($node->wait_for_job('postgres', $id), 30, 'job succeeded');

=head1 DESCRIPTION

A subclass of PostgreSQL::Test::Cluster that knows how to set up asyncjobs
(shared_preload_libraries, short poll interval, the extension created in
C<postgres>) and a few helpers every asyncjobs TAP test needs: waiting for
the worker pool, waiting for a job to complete, reading a job's row, and
polling with a timeout of the caller's choosing rather than
PG_TEST_TIMEOUT_DEFAULT.

Nodes are stopped by PostgreSQL::Test::Cluster's END block whatever way the
test script exits (done_testing, die or BAIL_OUT).

=cut

package AsyncJobsNode;

use strict;
use warnings;

use parent 'PostgreSQL::Test::Cluster';

use Carp;
use JSON::PP ();
use PostgreSQL::Test::Utils ();
use Test::More;
use Time::HiRes qw(usleep);

# Status codes of asyncjobs.asyncoperation (DESIGN section 3)
our %STATUS = (
	ready       => 0,
	waiting     => 10,
	retrying    => 11,
	paused      => 12,
	in_progress => 20,
	succeeded   => 30,
	failed      => 31,
	canceled    => 32);

# Cluster->init runs pg_regress --config-auth, and only PGXS's prove
# invocation sets PG_REGRESS: find it ourselves when prove is run by hand.
if (!defined $ENV{PG_REGRESS})
{
	my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
	my $pkglibdir = `$pg_config --pkglibdir`;
	chomp $pkglibdir if defined $pkglibdir;
	my $pg_regress = "$pkglibdir/pgxs/src/test/regress/pg_regress";
	$ENV{PG_REGRESS} = $pg_regress if $pkglibdir && -x $pg_regress;
}

=pod

=head1 METHODS

=over

=item AsyncJobsNode->new_node($name, %opts)

Creates, configures and starts a node, creates the extension in
C<postgres> and waits until that database has its worker pool.

Options (defaults in brackets):
C<max_workers> [2], C<poll_interval> ['200ms'], C<batch_size> [server
default], C<launcher_naptime> [server default], C<restart_after_crash> [0],
C<log_min_messages> ['debug1'], C<extra_conf> [none: more postgresql.conf
lines], C<create_extension> [1], C<wait_for_workers> [1].

=cut

sub new_node
{
	my ($class, $name, %opts) = @_;

	my $max_workers = $opts{max_workers} // 2;
	my $node = $class->new($name);
	$node->{_asyncjobs_max_workers} = $max_workers;

	$node->init;

	my @conf = (
		"shared_preload_libraries = 'asyncjobs'",
		"asyncjobs.max_workers = $max_workers",
		"asyncjobs.poll_interval = '" . ($opts{poll_interval} // '200ms') . "'",
		"max_worker_processes = 16",
		"restart_after_crash = " . ($opts{restart_after_crash} ? 'on' : 'off'),
		"log_min_messages = " . ($opts{log_min_messages} // 'debug1'),
		"log_error_verbosity = default",
		"log_connections = on",
		"log_disconnections = on");
	push @conf, "asyncjobs.batch_size = $opts{batch_size}"
	  if defined $opts{batch_size};
	push @conf, "asyncjobs.launcher_naptime = '$opts{launcher_naptime}'"
	  if defined $opts{launcher_naptime};
	push @conf, $opts{extra_conf} if defined $opts{extra_conf};
	$node->append_conf('postgresql.conf', join("\n", @conf));

	$node->start;

	if ($opts{create_extension} // 1)
	{
		$node->safe_psql('postgres', 'CREATE EXTENSION asyncjobs');
		if ($opts{wait_for_workers} // 1)
		{
			$node->wait_for_workers('postgres', $max_workers)
			  or BAIL_OUT("the workers of database postgres did not start");
		}
	}
	return $node;
}

=pod

=item $node->max_workers()

The asyncjobs.max_workers the node was configured with.

=cut

sub max_workers
{
	my ($self) = @_;
	return $self->{_asyncjobs_max_workers};
}

=pod

=item $node->poll_until($dbname, $query, $expected, $timeout_s)

Runs $query every 50 ms until its output is $expected ('t' by default),
for at most $timeout_s seconds (10 by default).  Errors count as "not yet"
(the server may be restarting).  Returns true on success; on timeout it
prints the last output with diag and returns false.

=cut

sub poll_until
{
	my ($self, $dbname, $query, $expected, $timeout_s) = @_;
	$expected  //= 't';
	$timeout_s //= 10;

	my $deadline = Time::HiRes::time() + $timeout_s;
	my ($stdout, $stderr) = ('', '');
	while (1)
	{
		my $timed_out = 0;
		my $ret = $self->psql(
			$dbname, $query,
			stdout        => \$stdout,
			stderr        => \$stderr,
			on_error_stop => 1,
			timeout       => $timeout_s + 5,
			timed_out     => \$timed_out);
		return 1
		  if !$timed_out && defined $ret && $ret == 0 && $stdout eq $expected;
		last if Time::HiRes::time() > $deadline;
		usleep(50_000);
	}
	diag(   "poll_until timed out after ${timeout_s}s on:\n$query\n"
		  . "expected: $expected\nlast output: $stdout\nstderr: $stderr");
	return 0;
}

=pod

=item $node->wait_for_server($timeout_s)

Waits until the server accepts connections and is out of recovery (after a
crash restart, or a start).

=cut

sub wait_for_server
{
	my ($self, $timeout_s) = @_;
	return $self->poll_until('postgres', 'SELECT NOT pg_is_in_recovery()',
		't', $timeout_s // 30);
}

=pod

=item $node->crash_worker($pid, $timeout_s)

Kills process $pid (a worker) with SIGKILL, waits until the postmaster has
reinitialized the server (crash restart; the node needs
restart_after_crash) and the server accepts connections again.  Returns
the log position from before the kill (true), or 0 when a step failed.

=cut

sub crash_worker
{
	my ($self, $pid, $timeout_s) = @_;
	my $off = $self->log_position;
	return 0 unless kill('KILL', $pid);
	return 0
	  unless eval {
		$self->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
		1;
	  };
	return 0 unless $self->wait_for_server($timeout_s // 60);
	return $off || '0 but true';
}

=pod

=item $node->worker_count($dbname, $query_db)

How many asyncjobs workers of $dbname are up (started and past their
checks), read from asyncjobs.workers in $query_db ('postgres').

=cut

sub _worker_count_sql
{
	my ($dbname) = @_;
	return
	    "SELECT count(*) FROM asyncjobs.workers "
	  . "WHERE database = "
	  . _quote_literal($dbname)
	  . " AND state IN ('idle', 'claiming', 'running')";
}

sub worker_count
{
	my ($self, $dbname, $query_db) = @_;
	return $self->safe_psql($query_db // 'postgres',
		_worker_count_sql($dbname));
}

=pod

=item $node->wait_for_workers($dbname, $n, $timeout_s, $query_db)

Waits until exactly $n workers of $dbname are up.  Returns true on success.

=cut

sub wait_for_workers
{
	my ($self, $dbname, $n, $timeout_s, $query_db) = @_;
	return $self->poll_until($query_db // 'postgres',
		_worker_count_sql($dbname), $n, $timeout_s // 10);
}

=pod

=item $node->wait_for_idle_workers($dbname, $n, $timeout_s)

Waits until $n workers of $dbname sleep waiting for work.

=cut

sub wait_for_idle_workers
{
	my ($self, $dbname, $n, $timeout_s) = @_;
	return $self->poll_until(
		'postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE database = "
		  . _quote_literal($dbname)
		  . " AND state = 'idle'",
		$n, $timeout_s // 10);
}

=pod

=item $node->wait_for_job($dbname, $job_id, $timeout_s)

Waits until the job is completed (statecode 3) and returns its statuscode;
returns undef (after a diag) if it is not completed within $timeout_s (10).

=cut

sub wait_for_job
{
	my ($self, $dbname, $job_id, $timeout_s) = @_;
	croak "job id must be a number" unless $job_id =~ /^\d+$/;

	return undef
	  unless $self->poll_until(
		$dbname,
		"SELECT count(*) FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $job_id AND statecode = 3",
		'1', $timeout_s // 10);
	return $self->safe_psql($dbname,
		    "SELECT statuscode FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $job_id");
}

=pod

=item $node->enqueue_sleeping_job($dbname, $key, $sleep_s)

Enqueues a SQL job whose every attempt inserts row $key into the test's
table C<effects (k text PRIMARY KEY, ran_at timestamptz)>, and whose first
attempt (retrycount 0) then sleeps $sleep_s seconds (60): long enough to be
killed or canceled while it runs. An attempt after a lost one finds its row
gone with the lost attempt (else the key fails it) and does not sleep.
Returns the job id.

=cut

sub enqueue_sleeping_job
{
	my ($self, $dbname, $key, $sleep_s) = @_;
	$sleep_s //= 60;
	return $self->safe_psql(
		$dbname, qq{
	SELECT asyncjobs.enqueue_sql(\$\$
		INSERT INTO effects VALUES ('$key', clock_timestamp());
		SELECT pg_sleep(CASE WHEN a.retrycount = 0 THEN $sleep_s ELSE 0 END)
		  FROM asyncjobs.asyncoperation a
		 WHERE a.asyncoperationid = asyncjobs.current_job();
	\$\$)});
}

=pod

=item $node->enqueue_together($dbname, [$operation, $data_json], ...)

Enqueues the jobs in one transaction, in the order given (so that a worker
claims them together); returns their ids.

=cut

sub enqueue_together
{
	my ($self, $dbname, @jobs) = @_;
	my $sql = "BEGIN;\n";
	$sql .= 'SELECT asyncjobs.enqueue(' . _quote_literal($_->[0]) . ', '
	  . _quote_literal($_->[1]) . ");\n"
	  foreach @jobs;
	return split /\n/, $self->safe_psql($dbname, $sql . 'COMMIT;');
}

=pod

=item $node->wait_for_job_sleeping($dbname, $job_id, $timeout_s, $fused)

Waits until a worker runs the job InProgress (Locked) and the job sleeps in
C<pg_sleep> (so its statements before the sleep are done); false after
$timeout_s (10).  A job that sleeps in a fused batch is not InProgress, and
soon stops to run again on its own, InProgress: this waits for that run.
With $fused true, it waits instead for the job to sleep in a fused batch
(not InProgress).

=cut

sub wait_for_job_sleeping
{
	my ($self, $dbname, $job_id, $timeout_s, $fused) = @_;
	croak "job id must be a number" unless $job_id =~ /^\d+$/;
	my $state = $fused ? '<> 2' : '= 2';
	return $self->poll_until(
		$dbname, qq{
		SELECT count(*) FROM asyncjobs.workers w
		  JOIN pg_stat_activity a ON a.pid = w.pid
		  JOIN asyncjobs.job j ON j.asyncoperationid = w.asyncoperationid
		 WHERE w.asyncoperationid = $job_id AND a.wait_event = 'PgSleep'
		   AND j.statecode $state},
		'1', $timeout_s // 10);
}

=pod

=item $node->wait_for_jobs($dbname, $where, $timeout_s)

Waits until no job matching the SQL condition $where (on
asyncjobs.asyncoperation) is left uncompleted, and at least one matches.

=cut

sub wait_for_jobs
{
	my ($self, $dbname, $where, $timeout_s) = @_;
	return $self->poll_until(
		$dbname,
		"SELECT count(*) > 0 AND count(*) FILTER (WHERE statecode <> 3) = 0 "
		  . "FROM asyncjobs.asyncoperation WHERE $where",
		't', $timeout_s // 10);
}

=pod

=item $node->job($dbname, $job_id)

The job's row of asyncjobs.asyncoperation as a hash reference (JSON
decoded: attempts is an array reference, NULL is undef), or undef when there
is no such job.

=cut

sub job
{
	my ($self, $dbname, $job_id) = @_;
	croak "job id must be a number" unless $job_id =~ /^\d+$/;

	my $json = $self->safe_psql($dbname,
		    "SELECT row_to_json(a) FROM asyncjobs.asyncoperation a "
		  . "WHERE asyncoperationid = $job_id");
	return undef if $json eq '';
	return JSON::PP->new->decode($json);
}

=pod

=item $node->json_query($dbname, $query, %params)

Runs a query that returns one JSON value and returns it decoded.

=cut

sub json_query
{
	my ($self, $dbname, $query, %params) = @_;
	my $json = $self->safe_psql($dbname, $query, %params);
	return JSON::PP->new->allow_nonref->decode($json);
}

=pod

=item $node->psql_as($role, $dbname, $sql)

safe_psql connected as $role.

=cut

sub psql_as
{
	my ($self, $role, $dbname, $sql, %params) = @_;
	return $self->safe_psql($dbname, $sql, %params,
		extra_params => [ '-U', $role ]);
}

=pod

=item $node->log_position()

The current length of the server log: pass it to log_since().

=cut

sub log_position
{
	my ($self) = @_;
	return -s $self->logfile // 0;
}

=pod

=item $node->log_since($offset)

The server log written after $offset.

=cut

sub log_since
{
	my ($self, $offset) = @_;
	return PostgreSQL::Test::Utils::slurp_file($self->logfile, $offset // 0);
}

sub _quote_literal
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

=pod

=back

=cut

1;
